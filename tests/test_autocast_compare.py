"""benchmarks/autocast_compare.py on one tiny model, where ModelOpt AutoCast is importable.

AutoCast (``nvidia-modelopt``) is not a dependency of fxtrt: its ``[onnx]`` extra pins onnx and
onnxruntime versions that clash with ours, so this test runs only in the venv that
benchmarks/README.md describes ("fp16: fxtrt's converter against ModelOpt AutoCast") and skips
everywhere else. The storage-emulation helper needs no modelopt and is tested always.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from benchmarks.autocast_compare import emulate_fp16_storage, precision_census


def _square_over_x(path: Path) -> None:
    """``y = float32((x16 * x16) / x16)``: fp16 overflows in the Mul at x = 1000."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])
    nodes = [helper.make_node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16),
             helper.make_node("Mul", ["xh", "xh"], ["sq"]),
             helper.make_node("Div", ["sq", "xh"], ["d"]),
             helper.make_node("Cast", ["d"], ["y"], to=TensorProto.FLOAT)]
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                                opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_emulation_shows_the_overflow_ort_cpu_hides(tmp_path):
    src, emu = tmp_path / "half.onnx", tmp_path / "emu.onnx"
    _square_over_x(src)
    feed = {"x": np.array([1000.0], np.float32)}
    real = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert emulate_fp16_storage(src, emu)["rounded_values"] == 3
    emulated = ort.InferenceSession(str(emu), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert np.isfinite(real).all()  # ORT's CPU provider computes the fp16 Mul in fp32
    assert np.isinf(emulated).all()  # fp16 storage: 1e6 is beyond 65504
    census = precision_census(src)
    assert (census["fp16_nodes"], census["fp32_nodes"], census["casts"]) == (2, 0, 2)


def test_compare_one_tiny_model(tmp_path):
    pytest.importorskip("modelopt.onnx.autocast", reason="nvidia-modelopt (AutoCast) is not installed in this venv; "
                        "see benchmarks/README.md for its own venv")
    from benchmarks.autocast_compare import compare_model

    r = compare_model("seed/layernorm_block", tmp_path, batch=(1, 2, 4), rounds=3)
    assert r["fxtrt_compiled"]
    for v in ("fxtrt", "autocast", "autocast_calib"):
        assert r["verification"][v]["checks"] > 0
        assert r["census"][v]["float_nodes"] == r["census"]["fp32"]["float_nodes"]
        assert r["errors"][v]["max_abs"] < 0.1
        assert "passed" in r["emulated"][v]
    assert r["verification"]["fxtrt"]["passed"]  # compile() verified it already
    assert r["census"]["fp32"]["fp16_nodes"] == 0
    assert r["latency"]["rounds"] == 3 and r["latency"]["median_ratio"]["autocast/fxtrt"] > 0
