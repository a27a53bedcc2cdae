"""The README's examples run as written."""
import re
from pathlib import Path

import torch

from tests import seed_models as sm

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def block_with(text: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    return next(b for b in blocks if text in b)


def test_user_pass_example():
    code = block_with("def tanh_gelu")
    body = [line for line in code.splitlines() if line.strip()]
    assert len([line for line in body if not line.startswith(("import", "from", "compiled ="))]) <= 10
    scope = {"model": sm.TransformerBlock().eval(), "x": torch.randn(1, 6, 32)}
    exec(compile(code, "README.md", "exec"), scope)
    report = scope["compiled"].report
    (record,) = [p for p in report.passes if p.name == "tanh_gelu"]
    assert [c.after for c in record.changes] == ["gelu(tanh)"]
    assert record.changes[0].source.endswith(f"seed_models.py:{sm.line_of(sm.TransformerBlock, 'mlp-out')}")
    assert report.verified


def test_transformers_example():
    import pytest

    pytest.importorskip("transformers")
    scope: dict = {}
    exec(compile(block_with("transformers.BertModel"), "README.md", "exec"), scope)
    compiled = scope["compiled"]
    assert compiled.output_names == ("last_hidden_state", "pooler_output")
    assert compiled.input_names == ("input_ids", "attention_mask")
    assert compiled.report.verified
    assert type(scope["out"]).__name__ == "BaseModelOutputWithPoolingAndCrossAttentions"
