"""compile(target="tensorrt"): engine plans for one and two dynamic dims, build_engines.sh read
back and checked against the plan, Polygraphy loaders inspected, and the stage recorded as
skipped (with the reason) where TensorRT or a GPU is missing. No fake tensorrt module: the test
that builds engines skips with the reason ``tensorrt_status()`` gives."""
from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest
import torch

import fxtrt
from fxtrt.stages.engines import plan_for
from fxtrt.backend.tensorrt import default_split_values, engine_loaders, parse_build_script, tensorrt_status
from tests import seed_models as sm

TRT_OK, TRT_WHY = tensorrt_status()


def check_script_matches_plan(out: Path, plan: dict) -> None:
    """Every planned engine has a trtexec and a polygraphy command with exactly its profile."""
    subprocess.run(["bash", "-n", str(out / "build_engines.sh")], check=True)
    commands = parse_build_script(out / "build_engines.sh")
    assert len(commands) == 2 * len(plan["engines"])
    for engine in plan["engines"]:
        mine = [c for c in commands if c.engine == engine["engine"]]
        assert sorted(c.tool for c in mine) == ["polygraphy", "trtexec"]
        for c in mine:
            assert c.onnx == engine["onnx"] and (out / c.onnx).is_file()
            for which in ("min", "opt", "max"):
                assert getattr(c, which) == {p["name"]: tuple(p[which]) for p in engine["inputs"] if p["dynamic"]}


def assert_skipped_and_nothing_claimed(compiled) -> None:
    out = compiled.onnx_path.parent
    stage = compiled.report.stages["engines"]
    assert stage["status"] == "skipped" and stage["reason"] == TRT_WHY
    assert "engines" not in stage, "no engine may be claimed that was not built"
    assert not list(out.glob("*.engine*"))
    assert not [k for k in compiled.report.artifacts if k.startswith("engine")]
    assert compiled.report.artifacts["build_script"] == str(out / "build_engines.sh")
    assert "none built" in compiled.report.to_text()


@pytest.fixture(scope="module")
def one_dim(tmp_path_factory):
    out = tmp_path_factory.mktemp("one_dim") / "out"
    return fxtrt.compile(sm.SizeView().eval(), torch.randn(1, 3, 16, 16), batch=(1, 8, 32), target="tensorrt",
                         out_dir=out)


@pytest.fixture(scope="module")
def two_dims(tmp_path_factory):
    x, mask = torch.randn(1, 30, 80), torch.ones(1, 1, 30)
    out = tmp_path_factory.mktemp("two_dims") / "out"
    return fxtrt.compile(sm.SpeechEncoder().eval(), (x, mask), batch=(1, 2, 4),
                         dynamic={0: {1: ("T", 20, 50, 100)}, 1: {2: ("T", 20, 50, 100)}},
                         target="tensorrt", out_dir=out)


@pytest.mark.skipif(TRT_OK, reason=f"TensorRT is usable here ({TRT_WHY}); test_engines_are_built_and_verified covers it")
def test_one_dynamic_dim_gives_one_engine_and_a_script(one_dim):
    out = one_dim.onnx_path.parent
    stage = one_dim.report.stages["engines"]
    plan = stage["plan"]
    assert plan["kind"] == "single" and plan["keep_dynamic"] == "batch" and plan["split"] == {}
    (engine,) = plan["engines"]
    assert engine["engine"] == "model.engine" and engine["onnx"] == "model.onnx"
    assert engine["inputs"] == [{"name": "x", "min": [1, 3, 16, 16], "opt": [8, 3, 16, 16], "max": [32, 3, 16, 16],
                                 "dynamic": True}]
    check_script_matches_plan(out, plan)
    assert_skipped_and_nothing_claimed(one_dim)
    assert sorted(p.name for p in out.iterdir()) == ["build_engines.sh", "model.onnx", "report.json"]
    assert json.loads((out / "report.json").read_text())["stages"]["engines"] == stage


@pytest.mark.skipif(TRT_OK, reason=f"TensorRT is usable here ({TRT_WHY})")
def test_two_dynamic_dims_keep_batch_dynamic_and_split_the_other(two_dims):
    out = two_dims.onnx_path.parent
    plan = two_dims.report.stages["engines"]["plan"]
    values = default_split_values(20, 50, 100)
    assert values == (20, 32, 50, 64, 100)
    assert plan["kind"] == "split" and plan["keep_dynamic"] == "batch" and plan["split"] == {"T": list(values)}
    assert [e["engine"] for e in plan["engines"]] == [f"model_T{t}.engine" for t in values]
    e50 = plan["engines"][2]
    assert e50["fixed"] == {"T": 50} and e50["ranges"] == {"batch": [1, 2, 4]}
    assert [(p["name"], p["min"], p["max"]) for p in e50["inputs"]] == [
        ("x", [1, 50, 80], [4, 50, 80]), ("mask", [1, 1, 50], [4, 1, 50])]
    check_script_matches_plan(out, plan)
    assert_skipped_and_nothing_claimed(two_dims)
    text = two_dims.report.to_text()
    assert "plan: batch dynamic, T discretised to [20, 32, 50, 64, 100]" in text
    script = (out / "build_engines.sh").read_text()
    assert "(batch dynamic, T discretised to [20, 32, 50, 64, 100])" in script


def test_keep_dynamic_chooses_the_dim_that_stays_dynamic(two_dims):
    settings = dataclasses.replace(two_dims.settings, keep_dynamic="T")
    plan = plan_for(settings, two_dims.onnx_path)
    assert plan.keep_dynamic == "T" and plan.split == (("batch", (1, 2, 4)),)
    assert [e.engine_name for e in plan.engines] == ["model_batch1.engine", "model_batch2.engine", "model_batch4.engine"]
    assert dict(plan.engines[1].ranges) == {"T": (20, 50, 100)}


def test_polygraphy_loaders_carry_the_reported_profiles(two_dims, tmp_path):
    from polygraphy.backend.trt import CreateConfig, NetworkFromOnnxPath

    plan = plan_for(two_dims.settings, two_dims.onnx_path)
    reported = two_dims.report.stages["engines"]["plan"]
    assert [e.engine_name for e in plan.engines] == [e["engine"] for e in reported["engines"]]
    for composed, engine in zip(engine_loaders(plan, tmp_path / "timing.cache"), reported["engines"]):
        network, config = composed.network, composed.config
        assert isinstance(network, NetworkFromOnnxPath) and network.strongly_typed is True
        assert isinstance(config, CreateConfig) and config.fp16 is False  # precision comes from the ONNX types
        (profile,) = config.profiles
        for p in engine["inputs"]:
            assert (list(profile[p["name"]].min), list(profile[p["name"]].opt), list(profile[p["name"]].max)) == (
                p["min"], p["opt"], p["max"])


def test_fp16_bucket_set_plans_one_engine_per_fp16_bucket(tmp_path):
    """Buckets, fp16 and TensorRT together: engines are built from the fp16 bucket models."""
    out = tmp_path / "out"
    model = sm.PerSampleLoop().eval()
    compiled = fxtrt.compile(model, torch.randn(1, 8), buckets=(1, 2), precision="fp16",
                             target="tensorrt", out_dir=out)
    assert compiled.onnx_paths == {1: out / "model_fp16_b1.onnx", 2: out / "model_fp16_b2.onnx"}
    plan = compiled.report.stages["engines"]["plan"]
    assert plan["kind"] == "buckets" and plan["split"] == {"batch": [1, 2]}
    assert [(e["onnx"], e["engine"]) for e in plan["engines"]] == [
        ("model_fp16_b1.onnx", "model_fp16_b1.engine"), ("model_fp16_b2.onnx", "model_fp16_b2.engine")]
    assert all(e["inputs"][0]["min"] == e["inputs"][0]["max"] for e in plan["engines"]), "static engines"
    commands = parse_build_script(out / "build_engines.sh")
    assert sorted({(c.onnx, c.engine) for c in commands}) == [(e["onnx"], e["engine"]) for e in plan["engines"]]
    poly = [c for c in commands if c.tool == "polygraphy"]
    assert all("--atol" in c.argv and c.argv[c.argv.index("--atol") + 1] == "0.01" for c in poly), "fp16 tolerances"
    kept = compiled.report.stages["fp16"]["kept_fp32"]
    assert {k["bucket"] for k in kept} <= {1, 2}
    fp16_rows = [r for r in compiled.report.verification if r.note.startswith("fp16")]
    assert {r.sizes["batch"] for r in fp16_rows} == {1, 2, 3} and all(r.passed for r in fp16_rows)
    if not TRT_OK:
        assert_skipped_and_nothing_claimed(compiled)
    x = torch.randn(5, 8)
    with torch.no_grad():
        want = model(x)
    torch.testing.assert_close(compiled(x), want, atol=1e-2, rtol=1e-2)  # served by the fp16 buckets


@pytest.mark.parametrize("kwargs, message", [
    (dict(target="tensorrt", keep_dynamic="seq"), "keep_dynamic='seq' is not a dynamic dim"),
    (dict(target="tensorrt", batch=None, dynamic={0: {1: (2, 3, 4)}, 1: {1: ("U", 2, 3, 4)}}),
     "keep_dynamic='batch' is not a dynamic dim; with target='tensorrt'"),
    (dict(target="trt"), "target='trt' is not supported"),
])
def test_bad_engine_arguments_fail_before_any_work(tmp_path, kwargs, message):
    class Two(torch.nn.Module):
        def forward(self, a, b):
            return a.sum(1) + b.sum(1)

    with pytest.raises(fxtrt.ConfigError, match=message):
        fxtrt.compile(Two(), (torch.randn(1, 3), torch.randn(1, 3)), out_dir=tmp_path / "out", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_engines_are_built_and_verified(tmp_path):
    if not TRT_OK:
        pytest.skip(f"needs TensorRT and a CUDA device: {TRT_WHY}")
    out = tmp_path / "out"
    compiled = fxtrt.compile(sm.SizeView().eval(), torch.randn(1, 3, 16, 16), batch=(1, 2, 4), target="tensorrt",
                             out_dir=out)
    stage = compiled.report.stages["engines"]
    assert stage["status"] == "built" and stage["engines"] == ["model.engine"]
    assert (out / "model.engine").is_file()
    trt_rows = [r for r in compiled.report.verification if "tensorrt vs torch" in r.note]
    assert trt_rows and all(r.passed for r in trt_rows)
