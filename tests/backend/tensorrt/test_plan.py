"""Engine plans: one engine per dynamic model, or one per value of the discretised dims, or per bucket."""
from __future__ import annotations

from pathlib import Path

import pytest

from fxtrt.backend.tensorrt import default_split_values, plan_buckets, plan_engines
from fxtrt.errors import ConfigError
from tests.backend.tensorrt.conftest import IMG_SPECS, SEQ_RANGES, SEQ_SPECS, shapes_of, static_onnx


def test_one_dynamic_dim_gives_one_engine_spanning_its_range(img_onnx: Path) -> None:
    plan = plan_engines(img_onnx, IMG_SPECS, {"batch": (1, 8, 32)})
    assert plan.kind == "single" and plan.keep_dynamic == "batch" and plan.split == ()
    (engine,) = plan.engines
    assert engine.engine_name == "net.engine"
    assert shapes_of(engine, "min") == {"image": (1, 3, 32, 32)}
    assert shapes_of(engine, "opt") == {"image": (8, 3, 32, 32)}
    assert shapes_of(engine, "max") == {"image": (32, 3, 32, 32)}
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
    assert shapes_of(e1000, "min") == {"x": (1, 1000, 80), "mask": (1, 1, 1000)}
    assert shapes_of(e1000, "opt") == {"x": (8, 1000, 80), "mask": (8, 1, 1000)}
    assert shapes_of(e1000, "max") == {"x": (32, 1000, 80), "mask": (32, 1, 1000)}
    assert e1000.description == "batch 1..32 (opt 8), T = 1000"
    assert plan.engine_for({"batch": 3, "T": 1000}) is e1000
    with pytest.raises(ConfigError, match="no planned engine"):
        plan.engine_for({"batch": 3, "T": 999})


def test_split_override_and_keeping_the_other_dim_dynamic(seq_onnx: Path) -> None:
    plan = plan_engines(seq_onnx, SEQ_SPECS, SEQ_RANGES, keep_dynamic="T", split={"batch": [8, 1, 4]})
    assert plan.keep_dynamic == "T" and plan.split == (("batch", (1, 4, 8)),)
    assert [e.engine_name for e in plan.engines] == ["model_batch1.engine", "model_batch4.engine", "model_batch8.engine"]
    e4 = plan.engines[1]
    assert shapes_of(e4, "min") == {"x": (4, 20, 80), "mask": (4, 1, 20)}
    assert shapes_of(e4, "max") == {"x": (4, 2000, 80), "mask": (4, 1, 2000)}


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


def test_bucket_plan_has_one_static_engine_per_static_batch_onnx(tmp_path: Path) -> None:
    paths = {b: static_onnx(tmp_path / f"net_b{b}.onnx", b) for b in (4, 1)}
    plan = plan_buckets(paths, IMG_SPECS)
    assert plan.kind == "buckets" and plan.split == (("batch", (1, 4)),)
    assert [e.engine_name for e in plan.engines] == ["net_b1.engine", "net_b4.engine"]
    e4 = plan.engines[1]
    assert e4.is_static and e4.onnx_path == paths[4]
    assert shapes_of(e4, "min") == shapes_of(e4, "max") == {"image": (4, 3, 32, 32)}
    assert plan.engine_for({"batch": 4}) is e4
    with pytest.raises(ConfigError, match="is 4, the plan says 8"):
        plan_buckets({8: paths[4]}, IMG_SPECS)
