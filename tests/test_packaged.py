"""Packaged models with their image size, sequence or audio length dynamic (issue 8).

Each is built as its library hands it out (random weights, small configs), compiled from a
batch-1 example, verified by compile() itself, and then checked independently through
``compiled(...)`` against eager at batch 1, 3 and 8 at the smallest, an in-between and the
largest size of the extra dim. The heavy configurations (resnet50 64..192, raft_small, YOLO at
320..640) run in ``python -m benchmarks.packaged``; these are its quick versions.
"""
from __future__ import annotations

import pytest

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
