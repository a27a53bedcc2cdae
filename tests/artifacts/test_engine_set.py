"""TensorRT engines as an artifact: planned for an ONNX model or a bucket set, the script written,
and, where TensorRT is missing, nothing claimed, served or verified. No fake tensorrt module: the
engine choice is checked on real plans, and the TensorRT run skips with the reason."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fxtrt.artifacts import BucketSet, OnnxModel
from fxtrt.stages.engines import build
from fxtrt.artifacts.bucket_set import BucketServer
from fxtrt.backend.tensorrt.runner import engine_for_shapes
from fxtrt.backend.tensorrt import TensorSpec, parse_build_script, plan_engines, tensorrt_status
from fxtrt.backend.verify import verify
from fxtrt.compare import Tolerance
from fxtrt.sizes import verification_points
from fxtrt.errors import EngineError
from tests.artifacts.conftest import BATCH, FP32, export, reference, settings

TRT_OK, TRT_WHY = tensorrt_status()
needs_no_tensorrt = pytest.mark.skipif(TRT_OK, reason=f"TensorRT is usable here ({TRT_WHY})")


@pytest.fixture(scope="module")
def linear(tmp_path_factory) -> tuple[torch.nn.Module, OnnxModel]:
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 3).eval()
    path = export(module, torch.randn(2, 4), tmp_path_factory.mktemp("engines") / "model.onnx")
    return module, OnnxModel(path, ["x"], ["output"], dims=(BATCH,), points=verification_points((BATCH,)),
                             tolerance=Tolerance(1e-2, 1e-2, "fp16 (atol=0.01, rtol=0.01)"))


@needs_no_tensorrt
def test_planned_engines_are_not_claimed_served_or_verified(linear) -> None:
    module, model = linear
    out = model.path.parent
    engines = build(model, out, settings())
    assert not engines.built and engines.files == (out / "build_engines.sh",)
    assert engines.index() == {"build_script": out / "build_engines.sh"}
    stage = engines.record()["engines"]
    assert stage["status"] == "skipped" and stage["reason"] == TRT_WHY and "engines" not in stage
    assert [e["engine"] for e in stage["plan"]["engines"]] == ["model.engine"]
    assert "planned but not built" in engines.notes[0]
    assert engines.tolerance == Tolerance(1e-2, 1e-2), "the source's numbers, without its fp16 note"
    assert engines.points == model.points and engines.parts() == () and not engines.serves({"batch": 2})
    assert verify(engines, reference(module, torch.randn(1, 4)), engines.points, engines.tolerance) == []
    with pytest.raises(EngineError, match="planned but not built") as info:
        engines.runner()
    assert "build_engines.sh" in info.value.hint
    assert [c.engine for c in parse_build_script(out / "build_engines.sh")] == ["model.engine"] * 2


@needs_no_tensorrt
def test_a_bucket_set_gets_one_static_engine_per_bucket_checked_at_its_bucket(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 3).eval()
    paths = {b: export(module, torch.randn(b, 4), tmp_path / f"model_b{b}.onnx", dynamic=False) for b in (1, 4)}
    buckets = BucketSet(BucketServer(paths, BATCH.sites, (0,)), ["x"], ["output"], BATCH, [], tolerance=FP32)
    engines = build(buckets, tmp_path, settings())
    plan = engines.record()["engines"]["plan"]
    assert plan["kind"] == "buckets" and [e["engine"] for e in plan["engines"]] == ["model_b1.engine", "model_b4.engine"]
    assert engines.points == ({"batch": 1}, {"batch": 4})
    assert engines.describe({"batch": 4}) == "model_b4.engine" and engines.describe({"batch": 3}) == ""


def test_each_feed_goes_to_the_engine_whose_profile_holds_its_shapes(linear, tmp_path: Path) -> None:
    _, model = linear
    plan = plan_engines(model.path, [TensorSpec("x", ("batch", 4), "float32")], {"batch": (1, 4, 8)},
                        split={"batch": [2, 8]})
    engines = list(plan.engines)
    assert [e.engine_name for e in engines] == ["model_batch2.engine", "model_batch8.engine"]
    assert engine_for_shapes(engines, {"x": (2, 4)}) == 0
    assert engine_for_shapes(engines, {"x": (8, 4)}) == 1
    assert engine_for_shapes(engines, {"x": (3, 4)}) is None  # between the engines: padding is the caller's
    assert engine_for_shapes(engines, {"x": (2, 4, 1)}) is None


def test_built_engines_are_verified_engine_by_engine_with_onnxruntime(linear, tmp_path: Path) -> None:
    if not TRT_OK:
        pytest.skip(f"needs TensorRT and a CUDA device: {TRT_WHY}")
    module, model = linear
    engines = build(model, model.path.parent, settings())
    rows = verify(engines, reference(module, torch.randn(1, 4)), engines.points, engines.tolerance)
    assert {r.note for r in rows} == {"model.engine: onnxruntime vs torch", "model.engine: tensorrt vs torch"}
    engines.check(rows)
