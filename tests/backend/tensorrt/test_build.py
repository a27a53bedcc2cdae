"""Polygraphy loaders and TensorRT itself. TensorRT cannot be installed here: everything up to the
TensorRT call is checked for real, and the tests that need TensorRT skip with the reason
``tensorrt_status()`` gives."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from fxtrt.backend.tensorrt import (
    EnginePlan,
    build_engines,
    engine_loader,
    engine_loaders,
    plan_engines,
    polygraphy_loaders,
    tensorrt_status,
    trt_runner,
)
from fxtrt.errors import EngineError
from tests.backend.tensorrt.conftest import IMG_SPECS, SEQ_RANGES, SEQ_SPECS


def test_polygraphy_loaders_are_lazy_and_carry_the_planned_profiles(seq_onnx: Path, tmp_path: Path) -> None:
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath

    trt_was_imported = "tensorrt" in sys.modules
    plan = plan_engines(seq_onnx, SEQ_SPECS, SEQ_RANGES)
    cache = tmp_path / "timing.cache"
    loaders = engine_loaders(plan, cache)
    assert [e.spec for e in loaders] == list(plan.engines)
    assert [(s, e) for s, e in polygraphy_loaders(plan, cache)] and len(polygraphy_loaders(plan, cache)) == len(loaders)
    for composed in loaders:
        spec, network, config, loader = composed.spec, composed.network, composed.config, composed.engine
        assert isinstance(loader, EngineBytesFromNetwork)
        assert isinstance(network, NetworkFromOnnxPath) and isinstance(config, CreateConfig)
        assert network.path == str(seq_onnx) and network.strongly_typed is True
        assert config.fp16 is False and config.tf32 is False  # precision comes from the ONNX types
        assert config.timing_cache_path == str(cache) and loader.timing_cache_path == str(cache)
        (profile,) = config.profiles
        assert list(profile.keys()) == ["x", "mask"]
        for p in spec.inputs:
            assert tuple(profile[p.name].min) == p.min
            assert tuple(profile[p.name].opt) == p.opt
            assert tuple(profile[p.name].max) == p.max
    runner = trt_runner(loaders[0].engine, name="trt")
    assert runner.name.startswith("trt")
    if not trt_was_imported:
        assert "tensorrt" not in sys.modules, "building loaders and runners must not import TensorRT"


def test_trt_runner_accepts_an_engine_file(tmp_path: Path) -> None:
    from polygraphy.backend.trt import EngineFromPath, TrtRunner

    runner = trt_runner(tmp_path / "model.engine")
    assert isinstance(runner, TrtRunner)
    assert isinstance(engine_loader(tmp_path / "model.engine"), EngineFromPath)


def test_tensorrt_status_answers_without_raising() -> None:
    ok, reason = tensorrt_status()
    assert isinstance(ok, bool) and reason
    if not ok:
        assert reason.startswith(("import tensorrt failed", "no CUDA device", "TensorRT"))


def test_build_engines_without_tensorrt_says_why_and_writes_nothing(img_onnx: Path) -> None:
    ok, reason = tensorrt_status()
    if ok:
        pytest.skip(f"TensorRT is usable here ({reason}); test_build_engines_builds_runnable_engines covers it")
    plan = plan_engines(img_onnx, IMG_SPECS, {"batch": (1, 2, 4)})
    before = sorted(p.name for p in img_onnx.parent.iterdir())
    with pytest.raises(EngineError) as info:
        build_engines(plan, img_onnx.parent)
    assert reason in str(info.value) and "build_engines.sh" in str(info.value)
    assert sorted(p.name for p in img_onnx.parent.iterdir()) == before


def test_build_engines_builds_runnable_engines(seq_onnx: Path) -> None:
    ok, reason = tensorrt_status()
    if not ok:
        pytest.skip(f"needs TensorRT and a CUDA device: {reason}")
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    plan: EnginePlan = plan_engines(seq_onnx, SEQ_SPECS, {"batch": (1, 2, 4), "T": (20, 32, 64)}, split={"T": [20, 64]})
    paths = build_engines(plan, seq_onnx.parent)
    assert [p.name for p in paths] == ["model_T20.engine", "model_T64.engine"]
    rng = np.random.default_rng(0)
    for spec, path in zip(plan.engines, paths):
        t = dict(spec.fixed)["T"]
        for batch in (1, 4):
            feed = {"x": rng.standard_normal((batch, t, 80)).astype(np.float32),
                    "mask": rng.random((batch, 1, t)) > 0.5}
            with trt_runner(path) as trt, OnnxrtRunner(SessionFromOnnx(str(seq_onnx))) as ort:
                np.testing.assert_allclose(trt.infer(feed)["y"], ort.infer(feed)["y"], rtol=1e-5, atol=1e-6)
