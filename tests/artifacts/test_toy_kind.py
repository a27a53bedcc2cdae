"""A new artifact kind costs one module (tests/artifacts/ort_optimized.py) and one registration
line: compile makes it, verifies it at the ONNX model's points, reports it and moves it into
out_dir, and the ONNX model itself is byte for byte what it was without it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import fxtrt
from fxtrt import api, report
from fxtrt.artifacts import staging
from fxtrt.stages import STAGES, register_stage
from tests.artifacts import ort_optimized


class Affine(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(6, 4)
        self.scale = torch.nn.Parameter(torch.full((4,), 2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.fc(x) * self.scale * 0.5).relu()  # constant arithmetic the basic level folds


@pytest.fixture
def with_toy_kind():
    remove = register_stage(ort_optimized.STAGE)  # the one line that opts in
    yield
    remove()


def test_a_registered_kind_is_made_verified_reported_and_moved(with_toy_kind, tmp_path: Path) -> None:
    compiled = fxtrt.compile(Affine(), torch.randn(2, 6), batch=(1, 4, 8), out_dir=tmp_path / "out")
    out = tmp_path / "out"
    assert (out / "model_ort.onnx").is_file() and compiled.made["ort_optimized"].files == (out / "model_ort.onnx",)
    rows = compiled.report.verification
    ort_rows = [r for r in rows if r.note == "model_ort.onnx"]
    onnx_rows = [r for r in rows if r.note != "model_ort.onnx"]
    assert ort_rows and all(r.passed for r in ort_rows)
    assert [(r.sizes, r.output) for r in ort_rows] == [(r.sizes, r.output) for r in onnx_rows], "the same points"
    written = json.loads((out / "report.json").read_text())
    assert written["artifacts"]["onnx_ort"] == str(out / "model_ort.onnx")
    assert written["stages"]["ort_optimized"]["model"] == "model_ort.onnx"
    assert "ort_optimized: model=model_ort.onnx" in compiled.report.to_text()
    x = torch.randn(5, 6)
    with compiled.made["ort_optimized"].runner() as runner:  # serves any batch the model serves
        (y,) = runner.infer({"x": x.numpy()}).values()
    torch.testing.assert_close(torch.from_numpy(y), torch.from_numpy(compiled.run(x)[0]), atol=1e-5, rtol=1e-4)


def test_the_onnx_model_is_the_same_bytes_with_or_without_the_kind(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Affine()
    x = torch.randn(2, 6)
    fxtrt.compile(model, x, batch=(1, 4, 8), out_dir=tmp_path / "plain")
    remove = register_stage(ort_optimized.STAGE)
    try:
        fxtrt.compile(model, x, batch=(1, 4, 8), out_dir=tmp_path / "toy")
    finally:
        remove()
    assert (tmp_path / "plain" / "model.onnx").read_bytes() == (tmp_path / "toy" / "model.onnx").read_bytes()
    assert ort_optimized.STAGE not in STAGES


def test_the_kind_needs_no_edit_to_the_compile_report_or_staging_code() -> None:
    for module in (api, report, staging):
        text = Path(module.__file__).read_text()
        assert "ort_optimized" not in text and "model_ort" not in text and "OrtOptimized" not in text
