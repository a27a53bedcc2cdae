"""Engine plans, Polygraphy loaders and build_engines.sh, with real onnx and Polygraphy.

TensorRT itself cannot be installed here; everything up to the TensorRT call is checked for
real (Polygraphy's own CLI parser reads the generated commands back), and the tests that need
TensorRT skip with the reason ``tensorrt_status()`` gives.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fxtrt.backend.tensorrt import (
    BUILD_SCRIPT_NAME,
    EnginePlan,
    TensorSpec,
    build_engines,
    default_split_values,
    parse_build_script,
    plan_buckets,
    plan_engines,
    polygraphy_loaders,
    tensorrt_status,
    trt_runner,
    write_build_script,
)
from fxtrt.errors import ConfigError, EngineError

SEQ_SPECS = [TensorSpec("x", ("batch", "T", 80), "float32"), TensorSpec("mask", ("batch", 1, "T"), "bool")]
SEQ_RANGES = {"batch": (1, 8, 32), "T": (20, 1000, 2000)}
IMG_SPECS = [TensorSpec("image", ("batch", 3, 32, 32), "float32")]


def _save(path: Path, inputs, nodes, outputs) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture
def seq_onnx(tmp_path: Path) -> Path:
    """x: [batch, T, 80] float, mask: [batch, 1, T] bool -> x * mask^T, both dims dynamic."""
    return _save(
        tmp_path / "model.onnx",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "T", 80]),
         helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", 1, "T"])],
        [helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
         helper.make_node("Transpose", ["m"], ["mt"], perm=[0, 2, 1]),
         helper.make_node("Mul", ["x", "mt"], ["y"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "T", 80])],
    )


@pytest.fixture
def img_onnx(tmp_path: Path) -> Path:
    return _save(
        tmp_path / "net.onnx",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_node("Relu", ["image"], ["out"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3, 32, 32])],
    )


def _static_onnx(path: Path, batch: int) -> Path:
    return _save(
        path,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 32, 32])],
        [helper.make_node("Relu", ["image"], ["out"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 3, 32, 32])],
    )


def _shapes(spec, which: str) -> dict[str, tuple[int, ...]]:
    return {p.name: getattr(p, which) for p in spec.inputs}


# --------------------------------------------------------------------------- plans


def test_one_dynamic_dim_gives_one_engine_spanning_its_range(img_onnx: Path) -> None:
    plan = plan_engines(img_onnx, IMG_SPECS, {"batch": (1, 8, 32)})
    assert plan.kind == "single" and plan.keep_dynamic == "batch" and plan.split == ()
    (engine,) = plan.engines
    assert engine.engine_name == "net.engine"
    assert _shapes(engine, "min") == {"image": (1, 3, 32, 32)}
    assert _shapes(engine, "opt") == {"image": (8, 3, 32, 32)}
    assert _shapes(engine, "max") == {"image": (32, 3, 32, 32)}
    assert engine.accepts({"batch": 32}) and not engine.accepts({"batch": 33})


def test_default_split_values_are_anchors_plus_spaced_powers_of_two() -> None:
    # 1024 is dropped: within 1/8 of opt=1000.
    assert default_split_values(20, 1000, 2000) == (20, 32, 64, 128, 256, 512, 1000, 2000)
    assert default_split_values(1, 8, 32) == (1, 2, 4, 8, 16, 32)
    assert default_split_values(5, 5, 5) == (5,)
    assert default_split_values(100, 120, 130) == (100, 120, 130)


def test_two_dynamic_dims_keep_batch_dynamic_and_split_the_other(seq_onnx: Path) -> None:
    plan = plan_engines(seq_onnx, SEQ_SPECS, SEQ_RANGES)
    assert plan.kind == "split" and plan.keep_dynamic == "batch"
    assert plan.split == (("T", (20, 32, 64, 128, 256, 512, 1000, 2000)),)
    assert [e.engine_name for e in plan.engines] == [
        f"model_T{t}.engine" for t in (20, 32, 64, 128, 256, 512, 1000, 2000)]
    e1000 = plan.engines[6]
    assert e1000.fixed == (("T", 1000),) and e1000.ranges == (("batch", (1, 8, 32)),)
    # T is fixed in every profile shape, batch spans its range; the mask follows both.
    assert _shapes(e1000, "min") == {"x": (1, 1000, 80), "mask": (1, 1, 1000)}
    assert _shapes(e1000, "opt") == {"x": (8, 1000, 80), "mask": (8, 1, 1000)}
    assert _shapes(e1000, "max") == {"x": (32, 1000, 80), "mask": (32, 1, 1000)}
    assert e1000.description == "batch 1..32 (opt 8), T = 1000"
    assert plan.engine_for({"batch": 3, "T": 1000}) is e1000
    with pytest.raises(ConfigError, match="no planned engine"):
        plan.engine_for({"batch": 3, "T": 999})


def test_split_override_and_keeping_the_other_dim_dynamic(seq_onnx: Path) -> None:
    plan = plan_engines(seq_onnx, SEQ_SPECS, SEQ_RANGES, keep_dynamic="T", split={"batch": [8, 1, 4]})
    assert plan.keep_dynamic == "T" and plan.split == (("batch", (1, 4, 8)),)
    assert [e.engine_name for e in plan.engines] == ["model_batch1.engine", "model_batch4.engine", "model_batch8.engine"]
    e4 = plan.engines[1]
    assert _shapes(e4, "min") == {"x": (4, 20, 80), "mask": (4, 1, 20)}
    assert _shapes(e4, "max") == {"x": (4, 2000, 80), "mask": (4, 1, 2000)}


def test_plan_is_json_able_and_deterministic(seq_onnx: Path) -> None:
    import json

    a = plan_engines(seq_onnx, SEQ_SPECS, SEQ_RANGES).to_dict()
    b = plan_engines(seq_onnx, SEQ_SPECS, dict(reversed(list(SEQ_RANGES.items())))).to_dict()
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert a["engines"][0]["inputs"][0] == {"name": "x", "min": [1, 20, 80], "opt": [8, 20, 80],
                                            "max": [32, 20, 80], "dynamic": True}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"keep_dynamic": "seq"}, "keep_dynamic='seq' is not a dynamic dim"),
        ({"split": {"T": [10, 100]}}, r"outside the range 20..2000"),
        ({"split": {"channels": [1]}}, "not a dynamic dim"),
        ({"keep_dynamic": "T", "split": {"T": [100]}}, "both kept dynamic and split"),
    ],
)
def test_plan_rejects_bad_arguments(seq_onnx: Path, kwargs, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_engines(seq_onnx, SEQ_SPECS, SEQ_RANGES, **kwargs)


def test_plan_checks_specs_and_ranges_against_the_onnx(seq_onnx: Path, img_onnx: Path) -> None:
    with pytest.raises(ConfigError, match="no .min, opt, max. range"):
        plan_engines(seq_onnx, SEQ_SPECS, {"batch": (1, 8, 32)})
    with pytest.raises(ConfigError, match="1 <= min <= opt <= max"):
        plan_engines(seq_onnx, SEQ_SPECS, {"batch": (1, 8, 32), "T": (100, 50, 200)})
    with pytest.raises(ConfigError, match="has inputs"):
        plan_engines(seq_onnx, [SEQ_SPECS[0]], SEQ_RANGES)
    with pytest.raises(ConfigError, match="is bool, the plan says float32"):
        plan_engines(seq_onnx, [SEQ_SPECS[0], TensorSpec("mask", ("batch", 1, "T"), "float32")], SEQ_RANGES)
    with pytest.raises(ConfigError, match="is 32, the plan says 64"):
        plan_engines(img_onnx, [TensorSpec("image", ("batch", 3, 64, 32), "float32")], {"batch": (1, 1, 1)})
    static = _static_onnx(img_onnx.parent / "static.onnx", 4)
    with pytest.raises(ConfigError, match="static .4. but the plan treats it as dynamic"):
        plan_engines(static, IMG_SPECS, {"batch": (1, 8, 32)})
    with pytest.raises(ConfigError, match="can't be written"):
        plan_engines(img_onnx, [TensorSpec("image:0", ("batch", 3, 32, 32), "float32")], {"batch": (1, 8, 32)})


def test_bucket_plan_has_one_static_engine_per_static_batch_onnx(tmp_path: Path) -> None:
    paths = {b: _static_onnx(tmp_path / f"net_b{b}.onnx", b) for b in (4, 1)}
    plan = plan_buckets(paths, IMG_SPECS)
    assert plan.kind == "buckets" and plan.split == (("batch", (1, 4)),)
    assert [e.engine_name for e in plan.engines] == ["net_b1.engine", "net_b4.engine"]
    e4 = plan.engines[1]
    assert e4.is_static and e4.onnx_path == paths[4]
    assert _shapes(e4, "min") == _shapes(e4, "max") == {"image": (4, 3, 32, 32)}
    assert plan.engine_for({"batch": 4}) is e4
    with pytest.raises(ConfigError, match="is 4, the plan says 8"):
        plan_buckets({8: paths[4]}, IMG_SPECS)


# --------------------------------------------------------------------------- Polygraphy loaders


def test_polygraphy_loaders_are_lazy_and_carry_the_planned_profiles(seq_onnx: Path, tmp_path: Path) -> None:
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath

    trt_was_imported = "tensorrt" in sys.modules
    plan = plan_engines(seq_onnx, SEQ_SPECS, SEQ_RANGES)
    cache = tmp_path / "timing.cache"
    loaders = polygraphy_loaders(plan, cache)
    assert [spec for spec, _ in loaders] == list(plan.engines)
    for spec, loader in loaders:
        assert isinstance(loader, EngineBytesFromNetwork)
        # Polygraphy keeps the composed loaders privately; they are what will run on the GPU.
        network, config = loader._network, loader._config
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
    runner = trt_runner(loaders[0][1], name="trt")
    assert runner.name.startswith("trt")
    if not trt_was_imported:
        assert "tensorrt" not in sys.modules, "building loaders and runners must not import TensorRT"


def test_trt_runner_accepts_an_engine_file(tmp_path: Path) -> None:
    from polygraphy.backend.trt import EngineFromPath, TrtRunner

    runner = trt_runner(tmp_path / "model.engine")
    assert isinstance(runner, TrtRunner)
    assert isinstance(runner._engine_or_context, EngineFromPath)


# --------------------------------------------------------------------------- build script


def test_build_script_round_trips_every_engine_with_both_tools(seq_onnx: Path) -> None:
    out_dir = seq_onnx.parent
    plan = plan_engines(seq_onnx, SEQ_SPECS, SEQ_RANGES)
    script = write_build_script(plan, out_dir)
    assert script == out_dir / BUILD_SCRIPT_NAME
    assert script.stat().st_mode & stat.S_IXUSR
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text
    assert "model_T1000.engine  batch 1..32 (opt 8), T = 1000" in text  # comments say what is built
    assert "--fp16" not in text and "--stronglyTyped" in text and "--strongly-typed" in text
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")], "no temp file left behind"
    subprocess.run(["bash", "-n", str(script)], check=True)

    commands = parse_build_script(script)
    assert len(commands) == 2 * len(plan.engines)
    for spec in plan.engines:
        mine = [c for c in commands if c.engine == spec.engine_name]
        assert sorted(c.tool for c in mine) == ["polygraphy", "trtexec"]
        for c in mine:
            assert c.onnx == "model.onnx"  # relative to the script, so out_dir can be copied
            assert c.min == _shapes(spec, "min")
            assert c.opt == _shapes(spec, "opt")
            assert c.max == _shapes(spec, "max")


def test_script_stops_before_building_when_the_tool_is_missing(img_onnx: Path) -> None:
    """Run for real here, where there is no trtexec: a clear message, exit 127, no engine file."""
    script = write_build_script(plan_engines(img_onnx, IMG_SPECS, {"batch": (1, 8, 32)}), img_onnx.parent)
    env = {"PATH": "/usr/bin:/bin", "TRTEXEC": "trtexec-not-installed"}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, cwd="/")
    assert done.returncode == 127 and "trtexec-not-installed not found" in done.stderr
    assert not list(img_onnx.parent.glob("*.engine*"))
    bad = subprocess.run(["bash", str(script)], env={**env, "FXTRT_BUILDER": "onnx"}, capture_output=True, text=True)
    assert bad.returncode == 2 and "must be trtexec or polygraphy" in bad.stderr


def test_file_names_with_spaces_are_quoted(tmp_path: Path) -> None:
    path = _static_onnx(tmp_path / "my net $1.onnx", 2)
    script = write_build_script(plan_buckets({2: path}, IMG_SPECS), tmp_path)
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert [(c.onnx, c.engine) for c in parse_build_script(script)] == [("my net $1.onnx", "my net $1_b2.engine")] * 2


def test_static_engines_get_no_shape_flags(tmp_path: Path) -> None:
    paths = {b: _static_onnx(tmp_path / f"net_b{b}.onnx", b) for b in (1, 8)}
    script = write_build_script(plan_buckets(paths, IMG_SPECS), tmp_path)
    commands = parse_build_script(script)
    assert [(c.tool, c.onnx, c.engine) for c in commands] == [
        ("trtexec", "net_b1.onnx", "net_b1.engine"), ("polygraphy", "net_b1.onnx", "net_b1.engine"),
        ("trtexec", "net_b8.onnx", "net_b8.engine"), ("polygraphy", "net_b8.onnx", "net_b8.engine")]
    for c in commands:
        assert c.min == c.opt == c.max == {}
        assert not any("Shapes" in a or "-shapes" in a for a in c.argv)


def test_polygraphy_cli_reads_the_commands_as_the_plan_says(seq_onnx: Path) -> None:
    """Polygraphy's own parser turns the script's command into loaders: same profiles, strongly typed."""
    out_dir = seq_onnx.parent
    plan = plan_engines(seq_onnx, SEQ_SPECS, SEQ_RANGES, split={"T": [1000]})
    commands = parse_build_script(write_build_script(plan, out_dir))
    (poly,) = [c for c in commands if c.tool == "polygraphy"]
    generated = out_dir / "gen.py"
    subprocess.run(
        [sys.executable, "-c", "import sys; from polygraphy.tools._main import main; sys.exit(main())",
         *poly.argv, "--gen-script", str(generated)],
        cwd=out_dir, check=True, capture_output=True,
    )
    code = generated.read_text()
    spec = plan.engines[0]
    profile = "Profile()" + "".join(
        f".add('{p.name}', min={list(p.min)}, opt={list(p.opt)}, max={list(p.max)})" for p in spec.inputs)
    assert profile in code
    network = re.search(r"NetworkFromOnnxPath\('([^']+)', strongly_typed=True", code)
    assert network and Path(network.group(1)) == seq_onnx  # Polygraphy resolves it against the script's dir
    assert "load_timing_cache='timing.cache'" in code and "save_timing_cache='timing.cache'" in code
    assert "path='model_T1000.engine.partial'" in code
    assert "OnnxrtRunner" in code and "TrtRunner" in code
    assert "fp16" not in code


def test_out_dir_can_be_copied_elsewhere(seq_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    plan = plan_engines(seq_onnx, SEQ_SPECS, SEQ_RANGES)
    write_build_script(plan, seq_onnx.parent)
    copy = tmp_path_factory.mktemp("gpu-machine") / "artifacts"
    shutil.copytree(seq_onnx.parent, copy)
    for c in parse_build_script(copy / BUILD_SCRIPT_NAME):
        assert (copy / c.onnx).is_file()
        assert not os.path.isabs(c.engine) and "/" not in c.engine


# --------------------------------------------------------------------------- TensorRT itself


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
