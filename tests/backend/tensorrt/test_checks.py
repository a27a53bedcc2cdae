"""The checks a plan passes before anything reaches a GPU machine, with real onnx files."""
from __future__ import annotations

from pathlib import Path

import pytest

from fxtrt.backend.tensorrt import TensorSpec, plan_engines
from fxtrt.errors import ConfigError
from tests.backend.tensorrt.conftest import IMG_SPECS, SEQ_RANGES, SEQ_SPECS, static_onnx


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
    static = static_onnx(img_onnx.parent / "static.onnx", 4)
    with pytest.raises(ConfigError, match="static .4. but the plan treats it as dynamic"):
        plan_engines(static, IMG_SPECS, {"batch": (1, 8, 32)})
    with pytest.raises(ConfigError, match="can't be written"):
        plan_engines(img_onnx, [TensorSpec("image:0", ("batch", 3, 32, 32), "float32")], {"batch": (1, 8, 32)})


def test_two_engines_for_one_file_and_bad_names_fail_before_the_plan_is_used(tmp_path: Path) -> None:
    from fxtrt.backend.tensorrt.checks import check_specs, check_unique

    a = static_onnx(tmp_path / "net_b2.onnx", 2)
    (spec,) = plan_engines(a, [TensorSpec("image", (2, 3, 32, 32), "float32")], {}).engines
    with pytest.raises(ConfigError, match="two engines would be written to the same file"):
        check_unique([spec, spec])
    with pytest.raises(ConfigError, match="listed twice"):
        check_specs(IMG_SPECS + IMG_SPECS)
    with pytest.raises(ConfigError, match="unusable dim name"):
        check_specs([TensorSpec("image", ("bat ch", 3), "float32")])
