"""Small ONNX models and plans the TensorRT tests share (real onnx; TensorRT is not needed)."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from fxtrt.backend.tensorrt import TensorSpec

SEQ_SPECS = [TensorSpec("x", ("batch", "T", 80), "float32"), TensorSpec("mask", ("batch", 1, "T"), "bool")]
SEQ_RANGES = {"batch": (1, 8, 32), "T": (20, 1000, 2000)}
IMG_SPECS = [TensorSpec("image", ("batch", 3, 32, 32), "float32")]


def save_model(path: Path, inputs, nodes, outputs) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture
def seq_onnx(tmp_path: Path) -> Path:
    """x: [batch, T, 80] float, mask: [batch, 1, T] bool -> x * mask^T, both dims dynamic."""
    return save_model(
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
    return save_model(
        tmp_path / "net.onnx",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_node("Relu", ["image"], ["out"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3, 32, 32])],
    )


def static_onnx(path: Path, batch: int) -> Path:
    return save_model(
        path,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 32, 32])],
        [helper.make_node("Relu", ["image"], ["out"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 3, 32, 32])],
    )


def shapes_of(spec, which: str) -> dict[str, tuple[int, ...]]:
    return {p.name: getattr(p, which) for p in spec.inputs}
