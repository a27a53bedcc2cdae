"""The fp16 twin of an ONNX artifact: repaired against the compile's one PyTorch reference, which it
reuses, verified at the fp16 tolerances, for one model and for a bucket set. Real torch.onnx export,
onnxruntime and Polygraphy; the model overflows fp16 on purpose."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto

from fxtrt.artifacts import BucketSet, OnnxModel
from fxtrt.stages.fp16 import convert
from fxtrt.artifacts.bucket_set import BucketServer
from fxtrt.backend.verify import verify
from fxtrt.compare import Tolerance
from fxtrt.sizes import verification_points
from fxtrt.errors import PrecisionError
from tests import seed_models as sm
from tests.artifacts.conftest import BATCH, FP32, export, reference, settings


@pytest.fixture(scope="module")
def overflow(tmp_path_factory) -> tuple[torch.nn.Module, OnnxModel]:
    torch.manual_seed(0)
    module = sm.Fp16Overflow().eval()
    path = export(module, torch.randn(2, 16), tmp_path_factory.mktemp("fp16") / "model.onnx")
    return module, OnnxModel(path, ["x"], ["output"], dims=(BATCH,), points=verification_points((BATCH,)), tolerance=FP32)


def test_convert_repairs_against_the_reference_the_fp32_check_already_computed(overflow, tmp_path: Path) -> None:
    module, fp32 = overflow
    ref = reference(module, torch.randn(1, 16))
    assert all(r.passed for r in verify(fp32, ref, fp32.points, fp32.tolerance))
    runs = ref.runs
    assert runs == len(fp32.points) == 4

    half = convert(fp32, ref, tmp_path, settings())
    rows = verify(half, ref, half.points, half.tolerance)
    assert ref.runs == runs, "the repair and the fp16 check reuse the fp32 check's PyTorch outputs"
    assert all(r.passed for r in rows) and {r.note for r in rows} == {"fp16 (atol=0.01, rtol=0.01)"}
    half.check(rows)

    assert half.primary == tmp_path / "model_fp16.onnx" and half.files == (half.primary,)
    assert half.index() == {"onnx": tmp_path / "model_fp16.onnx", "onnx_fp32": fp32.path}
    assert half.serves({"batch": 8}) and half.describe({"batch": 8}) == "" and not half.notes
    record = half.record()["fp16"]
    assert record["passed"] and record["repaired"] and record["models"] == ["model_fp16.onnx"]
    kept = {k["op_type"]: k for k in record["kept_fp32"]}
    assert kept["Mul"]["rule"] == "diverged" and kept["Mul"]["source"].endswith(
        f"seed_models.py:{sm.line_of(sm.Fp16Overflow, 'square')}")
    io = [vi.type.tensor_type.elem_type for vi in onnx.load(str(half.primary)).graph.input]
    assert io == [TensorProto.FLOAT]


def test_an_fp16_model_outside_its_tolerance_is_a_precision_error(overflow, tmp_path: Path) -> None:
    module, fp32 = overflow
    ref = reference(module, torch.randn(1, 16))
    half = convert(fp32, ref, tmp_path, settings())
    rows = verify(half, ref, half.points, Tolerance(1e-7, 0.0, "fp16 (atol=1e-07, rtol=0)"))
    with pytest.raises(PrecisionError, match="passed its repair but not verification"):
        half.check(rows)


def test_without_a_reference_the_conversion_is_unchecked_and_says_so(overflow, tmp_path: Path) -> None:
    _, fp32 = overflow
    half = convert(fp32, None, tmp_path, settings())
    assert half.notes == ("the fp16 model was neither repaired nor verified (verify=False)",)
    record = half.record()["fp16"]
    assert record["repaired"] is False and not record["rounds"]
    assert {k["rule"] for k in record["kept_fp32"]} <= {"op_type", "rules", "schema", "constant"}


def test_a_bucket_set_gets_one_repaired_fp16_model_per_bucket(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = sm.Fp16Overflow().eval()
    paths = {b: export(module, torch.randn(b, 16), tmp_path / f"model_b{b}.onnx", dynamic=False) for b in (1, 2)}
    fp32 = BucketSet(BucketServer(paths, BATCH.sites, (0,)), ["x"], ["output"], BATCH, [], tolerance=FP32)
    ref = reference(module, torch.randn(1, 16))
    half = convert(fp32, ref, tmp_path, settings())
    assert {b: m.primary.name for b, m in half.members().items()} == {1: "model_fp16_b1.onnx", 2: "model_fp16_b2.onnx"}
    assert half.index() == {"onnx": tmp_path / "model_fp16_b2.onnx", "onnx_b1": tmp_path / "model_fp16_b1.onnx",
                            "onnx_b2": tmp_path / "model_fp16_b2.onnx", "onnx_fp32_b1": paths[1],
                            "onnx_fp32_b2": paths[2]}
    assert {k["bucket"] for k in half.record()["fp16"]["kept_fp32"]} == {1, 2}
    rows = verify(half, ref, half.points, half.tolerance)
    notes = {r.sizes["batch"]: r.note for r in rows}
    assert notes[3] == "fp16 (atol=0.01, rtol=0.01); served as 2+1" and all(r.passed for r in rows)
