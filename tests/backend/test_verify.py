"""The check itself: our elementwise rule, our CPU torch runner, Polygraphy's Comparator."""
import numpy as np
import pytest
import torch
from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

from fxtrt.backend.verify import ort_meta
from fxtrt.backend.verify import TorchRunner, compare_arrays, raise_on_failure, run_comparison
from fxtrt.errors import VerificationError


def test_rule_is_atol_plus_rtol_times_ref():
    ref = np.array([100.0, 0.0])
    # allowed at ref=100: 1e-4 + 1e-3 * 100 = 0.1001
    assert compare_arrays(ref, ref + [0.1, 0.0], 1e-4, 1e-3)[2]
    assert not compare_arrays(ref, ref + [0.15, 0.0], 1e-4, 1e-3)[2]
    # near zero only atol counts
    assert not compare_arrays(np.array([0.0]), np.array([2e-4]), 1e-4, 1e-3)[2]
    # a large relative error on a tiny reference fails even though |d| < atol would pass alone? no:
    # |d| = 5e-5 <= atol, so it passes: the sum rule is atol OR'd into the bound, not a second test
    assert compare_arrays(np.array([1e-6]), np.array([5e-5]), 1e-4, 1e-3)[2]


def test_shape_mismatch_and_nan_fail():
    assert compare_arrays(np.zeros((2, 3)), np.zeros((3, 3)), 1, 1)[3].startswith("shape")
    assert not compare_arrays(np.array([1.0]), np.array([np.nan]), 1e-4, 1e-3)[2]
    assert compare_arrays(np.array([np.nan]), np.array([np.nan]), 1e-4, 1e-3)[2]


@pytest.fixture
def linear_onnx(tmp_path):
    model = torch.nn.Linear(4, 3).eval()
    path = tmp_path / "m.onnx"
    program = torch.onnx.export(model, (torch.randn(2, 4),), dynamo=True, input_names=["x"],
                                output_names=["output"], dynamic_shapes=({0: torch.export.Dim("batch")},))
    program.save(str(path))
    return model, path


def feeds(*batches):
    return [({"batch": b}, {"x": np.random.RandomState(b).randn(b, 4).astype(np.float32)}) for b in batches]


def test_comparator_passes_the_matching_model(linear_onnx):
    model, path = linear_onnx
    torch_runner = TorchRunner(model, ["x"], [torch.float32], ["output"], ort_meta(path))
    ort_runner = OnnxrtRunner(SessionFromOnnx(str(path), providers=["CPUExecutionProvider"]))
    rows = run_comparison([torch_runner, ort_runner], feeds(1, 5), 1e-4, 1e-3)
    assert [r.sizes["batch"] for r in rows] == [1, 5] and all(r.passed for r in rows)
    raise_on_failure(rows, 1e-4, 1e-3)


def test_comparator_catches_a_wrong_model(linear_onnx):
    model, path = linear_onnx
    other = torch.nn.Linear(4, 3).eval()  # different weights
    torch_runner = TorchRunner(other, ["x"], [torch.float32], ["output"], ort_meta(path))
    ort_runner = OnnxrtRunner(SessionFromOnnx(str(path), providers=["CPUExecutionProvider"]))
    rows = run_comparison([torch_runner, ort_runner], feeds(2), 1e-4, 1e-3)
    assert not rows[0].passed and rows[0].max_abs > 1e-3
    with pytest.raises(VerificationError, match="does not match") as info:
        raise_on_failure(rows, 1e-4, 1e-3)
    assert info.value.rows == rows
