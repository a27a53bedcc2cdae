import json
import subprocess
import sys
from pathlib import Path

import torch

import fxtrt
from tests import explain_models
from tests import seed_models as sm

FILE = str(Path(explain_models.__file__).resolve())


def line(text: str) -> int:
    lines = Path(FILE).read_text().splitlines()
    return next(i for i, t in enumerate(lines, start=1) if text in t)


def hazard_inputs():
    return torch.randn(1, 3, 8, 8), torch.tensor([[1, 2, 3, 2, 0]]), torch.tensor([3])


def by_kind(result):
    out = {}
    for e in result.entries:
        out.setdefault(e.kind, []).append(e)
    return out


def test_explain_lists_each_hazard_at_its_line():
    result = fxtrt.explain(explain_models.hazards(), hazard_inputs(), batch_dims=(0, 0, None))
    kinds = by_kind(result)
    view = line("view(int(x.size(0))")
    assert [e.source for e in kinds["baked-size"]] == [f"{FILE}:{view}"]
    assert kinds["baked-size"][0].code == "h = self.conv(x).view(int(x.size(0)), -1)"
    assert kinds["baked-size"][0].fixable
    assert [e.source for e in kinds["shape-chain"]] == [f"{FILE}:{view}"]
    assert [e.source for e in kinds["bool"]] == [f"{FILE}:{line('mask = tgt == 2')}"]
    assert [e.source for e in kinds["float64"]] == [f"{FILE}:{line('* self.scale * mask')}"]
    (tolist,) = kinds["value-dependent"]
    assert tolist.source == f"{FILE}:{line('lengths.tolist()')}"
    assert tolist.code == "n = max(lengths.tolist())" and not tolist.fixable
    assert "structure" not in kinds


def test_explain_reports_structure_dependence():
    result = fxtrt.explain(sm.PerSampleLoop(), torch.randn(1, 8))
    (entry,) = result.entries
    assert entry.kind == "structure" and entry.fixable and "buckets" in entry.action
    assert entry.source.endswith(f"seed_models.py:{sm.line_of(sm.PerSampleLoop, 'loop')}")


def test_clean_model_has_nothing_to_explain():
    result = fxtrt.explain(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()), torch.randn(1, 4))
    assert result.entries == [] and "nothing to fix" in result.to_text()


def test_explain_emits_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fxtrt.explain(sm.SizeView(), torch.randn(1, 3, 16, 16))
    assert list(tmp_path.iterdir()) == []


def test_cli_explain_text_and_json():
    args = [sys.executable, "-m", "fxtrt", "explain", f"{FILE}:hazards", "--input", "1x3x8x8",
            "--input", "1x5:int64", "--input", "1:int64", "--batch-dims", "0,0,none"]
    text = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert text.returncode == 0, text.stderr
    assert f"{FILE}:{line('view(int(x.size(0))')}  [baked-size]" in text.stdout
    assert "n = max(lengths.tolist())" in text.stdout
    as_json = subprocess.run(args + ["--json"], capture_output=True, text=True, timeout=300)
    data = json.loads(as_json.stdout)
    assert {e["kind"] for e in data["entries"]} == {"baked-size", "shape-chain", "bool", "float64", "value-dependent"}


def test_explain_says_how_each_dim_was_captured():
    result = fxtrt.explain(sm.IntSizeView(), torch.randn(1, 3, 16, 16), batch=(1, 8, 32))
    (dim,) = result.dims
    assert dim["how"] == "generalised by trace diff" and dim["trace_sizes"]
    assert "generalised by trace diff" in result.to_text()
    clean = fxtrt.explain(torch.nn.Conv2d(3, 4, 3, stride=2), torch.randn(1, 3, 16, 16),
                          dynamic={0: {2: (8, 16, 32), 3: (8, 16, 32)}})
    assert {d["how"] for d in clean.dims} == {"symbolic from capture"}
    assert "symbolic from capture" in clean.to_text()
