"""Packaged models with their image size, sequence or audio length dynamic (issue 8).

Each is built as its library hands it out (random weights, small configs), compiled from a
batch-1 example, verified by compile() itself, and then checked independently through
``compiled(...)`` against eager at batch 1, 3 and 8 at the smallest, an in-between and the
largest size of the extra dim. The heavy configurations (resnet50 64..192, raft_small, YOLO at
320..640) run in ``python -m benchmarks.packaged``; these are its quick versions.
"""
from __future__ import annotations


import onnx
import pytest
import torch

import fxtrt
from benchmarks import packaged

QUICK = [c for c in packaged.CASES if packaged.quick_config(c) is not None]
TOOLCHAIN = ("/torch/", "/onnx/", "/onnxscript/", "/fxtrt/")


@pytest.fixture(autouse=True)
def _yolo_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo"))


@pytest.mark.slow
@pytest.mark.parametrize("case", QUICK, ids=[c.name for c in QUICK])
def test_packaged_model_matches_eager_at_every_checked_size(case, tmp_path):
    pytest.importorskip({"yolo": "ultralytics", "bert": "transformers", "wav2": "transformers"}.get(
        case.name[:4], "torchvision"))
    row = packaged.run_case(case, packaged.quick_config(case), tmp_path / "out")
    if case.expect_error:
        assert row["passed"], (row.get("error"), row.get("source"))
        assert case.expect_source in row["source"] and not any(t in row["source"] for t in TOOLCHAIN), row["source"]
        return
    assert "error" not in row, row.get("error")
    assert row["passed"], [c for c in row["checks"] if not c["passed"]]
    assert set(row["dims"].values()) == {"symbolic from capture"}, "one capture, no trace diffing"
    assert row["one_capture"], "emitted as captured: no second torch.export of the rewritten graph"
    assert {c["batch"] for c in row["checks"]} >= {1, 3}


class PairEncoder(torch.nn.Module):
    """raft_small's pattern (its full run takes ~75 s: benchmarks.packaged): both images through
    one encoder as one batch of 2B, chunked back. torch.export specialises the batch on the chunk,
    and keeps the two inputs' batch as two symbols joined by an assert."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, a, b):
        f1, f2 = self.enc(torch.cat([a, b], dim=0)).chunk(2, dim=0)  # CHUNK
        return (f1 * f2).sum(1)


def test_raft_pattern_stays_symbolic_and_is_named_once(tmp_path):
    """chunk(2) of the two inputs concatenated along the batch: two pieces at every batch size, so
    the pieces are computed from the shape (frontend.chunks) and the batch is symbolic from capture
    (it was generalised by trace diffing before chunk was written symbolically)."""
    model = PairEncoder().eval()
    x = torch.randn(1, 3, 8, 8)
    compiled = fxtrt.compile(model, (x, x.clone()), batch=(1, 4, 8), out_dir=tmp_path / "out")
    dim = compiled.report.stages["capture"]["dims"]["batch"]
    assert dim["how"] == "symbolic from capture"
    graph = onnx.load(str(compiled.onnx_path)).graph
    assert [i.type.tensor_type.shape.dim[0].dim_param for i in graph.input] == ["batch", "batch"]
    a, b = torch.randn(5, 3, 8, 8), torch.randn(5, 3, 8, 8)
    torch.testing.assert_close(torch.as_tensor(compiled(a, b)), model(a, b).detach(), atol=1e-4, rtol=1e-3)
