"""One ONNX model as an artifact: the sizes it serves, its runner, its files, and one verification
stage that checks it against PyTorch. Real torch.onnx export, onnxruntime and Polygraphy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from fxtrt.artifacts import OnnxModel
from fxtrt.backend.cleanup import save_onnx
from fxtrt.backend.verify import verify
from fxtrt.sizes import verification_points
from fxtrt.errors import VerificationError
from tests.artifacts.conftest import BATCH, FP32, export, reference


@pytest.fixture(scope="module")
def linear(tmp_path_factory) -> tuple[torch.nn.Module, OnnxModel]:
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 3).eval()
    path = export(module, torch.randn(2, 4), tmp_path_factory.mktemp("onnx") / "model.onnx")
    return module, OnnxModel(path, ["x"], ["output"], dims=(BATCH,), points=verification_points((BATCH,)), tolerance=FP32)


def test_a_dynamic_model_serves_its_range_as_it_is(linear) -> None:
    _, model = linear
    assert model.serves({"batch": 1}) and model.serves({"batch": 8}) and not model.serves({"batch": 9})
    assert model.describe({"batch": 3}) == ""
    assert [p["batch"] for p in model.points] == [1, 3, 4, 8]
    assert model.files == (model.path,) and model.index() == {"onnx": model.path}
    assert model.members() == {None: model}
    static = OnnxModel(model.path, ["x"], ["output"], fixed={"batch": 4}, tolerance=FP32)
    assert static.serves({"batch": 4}) and not static.serves({"batch": 3})


def test_run_serves_through_the_runner_and_casts_to_the_declared_types(linear) -> None:
    module, model = linear
    x = np.random.default_rng(0).standard_normal((5, 4))  # float64; the model takes float32
    (got,) = model.run([x])
    with torch.no_grad():
        want = module(torch.from_numpy(x).float()).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
    with model.runner() as runner:  # the runner verification drives is the one run() uses
        np.testing.assert_allclose(runner.infer({"x": x.astype(np.float32)})["output"], got)


def test_verify_passes_the_exported_model_and_its_check_catches_a_wrong_one(linear) -> None:
    module, model = linear
    rows = verify(model, reference(module, torch.randn(1, 4)), model.points, model.tolerance)
    assert [r.sizes for r in rows] == [{"batch": b} for b in (1, 3, 4, 8)] and all(r.passed for r in rows)
    assert all(r.note == "" for r in rows)
    model.check(rows)
    other = torch.nn.Linear(4, 3)  # other weights
    rows = verify(model, reference(other, torch.randn(1, 4)), model.points, model.tolerance)
    with pytest.raises(VerificationError, match="does not match the original") as info:
        model.check(rows)
    assert info.value.rows == rows


def test_moved_model_and_its_external_data(tmp_path: Path) -> None:
    exported = export(torch.nn.Linear(64, 64), torch.randn(2, 64), tmp_path / "exported.onnx")
    big = tmp_path / "model.onnx"
    save_onnx(onnx.load(str(exported)), big, threshold=0)  # the weights go beside the file
    staged = OnnxModel(big, ["x"], ["output"], dims=(BATCH,), tolerance=FP32)
    assert staged.files == (big, tmp_path / "model.onnx.data")
    moved = staged.moved_to(tmp_path / "final")
    assert moved.path == tmp_path / "final" / "model.onnx" and moved.dims == staged.dims
