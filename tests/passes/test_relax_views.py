"""relax_views on the model that needs it: transformers' T5 encoder (random weights, tiny config)
whose batch is baked in by the caller, so its graph is traced at concrete sizes and re-exported."""
from __future__ import annotations

import onnx
import pytest
import torch

import fxtrt
from fxtrt.passes.relax_views import relax_views
from tests.passes.conftest import assert_same, run_with_requirements

aten = torch.ops.aten
transformers = pytest.importorskip("transformers")


class T5Encoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        config = transformers.T5Config(d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8, vocab_size=100)
        self.t5 = transformers.T5EncoderModel(config).eval()

    def forward(self, input_ids, attention_mask):
        hidden = self.t5(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden.reshape(int(input_ids.size(0)), -1)  # bakes the batch: trace diffing generalises it


def example():
    return torch.randint(0, 100, (1, 16)), torch.ones(1, 16, dtype=torch.long)


def test_contiguous_becomes_an_unconditional_copy(traced):
    model = T5Encoder()
    gm, ctx = traced(model, example())
    run_with_requirements(gm, ctx, "generalize_batch")
    assert any(n.target == aten.contiguous.default for n in gm.graph.nodes)
    result = relax_views(gm, ctx)
    assert not any(n.target == aten.contiguous.default for n in gm.graph.nodes)
    clones = [n for n in gm.graph.nodes if n.target == aten.clone.default]
    assert clones and all(n.kwargs["memory_format"] == torch.contiguous_format for n in clones)
    assert any("contiguous" in c.before for c in result.changes)
    ids, mask = example()
    assert_same(gm, model, ids.repeat(5, 1), mask.repeat(5, 1))


def test_symbolic_captures_get_it_too(traced):
    """The benchmark's T5 encoder is symbolic from capture and still fails emission without it."""
    class PlainT5(T5Encoder):
        def forward(self, input_ids, attention_mask):
            return self.t5(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    gm, ctx = traced(PlainT5(), example())
    assert ctx.captured.symbolic
    assert relax_views(gm, ctx).modified
    assert fxtrt.compile(PlainT5(), example(), batch=(1, 4, 8)).report.verified


def test_static_graphs_are_left_alone(traced):
    ids, mask = example()
    gm, ctx = traced(T5Encoder(), (ids.repeat(2, 1), mask.repeat(2, 1)), batch=None)
    assert not relax_views(gm, ctx).modified


def test_t5_needs_it_and_compiles_with_it():
    """Without the pass torch.onnx's decomposition re-derives strides and refuses a view."""
    model = T5Encoder()
    with pytest.raises(fxtrt.EmitError):
        fxtrt.compile(model, example(), batch=(1, 4, 8), passes=["canonicalize_flatten", "fix_dtypes"], verify=False)
    compiled = fxtrt.compile(model, example(), batch=(1, 4, 8))
    assert compiled.report.verified
    assert "Identity" not in {n.op_type for n in onnx.load(str(compiled.onnx_path)).graph.node}
