"""Small ONNX models and runners the fp16 tests share: real onnx, onnxruntime and torch.onnx.export."""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

def make_model(nodes, inits=(), inputs=(("x", TensorProto.FLOAT, ["batch", 16]),),
               outputs=(("y", TensorProto.FLOAT, ["batch", 16]),)) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    return model


def run_model(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


def io_types(model: onnx.ModelProto) -> tuple[list[int], list[int]]:
    return ([vi.type.tensor_type.elem_type for vi in model.graph.input],
            [vi.type.tensor_type.elem_type for vi in model.graph.output])


def value_type(model: onnx.ModelProto, name: str) -> int:
    inferred = onnx.shape_inference.infer_shapes(model)
    for vi in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input):
        if vi.name == name:
            return vi.type.tensor_type.elem_type
    raise KeyError(name)


def random_feeds(rng: np.random.Generator, *batches: int, scale: float = 1.0) -> list[dict[str, np.ndarray]]:
    """Each test file draws from its own generator, so its data doesn't depend on which files ran."""
    return [{"x": (rng.standard_normal((b, 16)) * scale).astype(np.float32)} for b in batches]


def export_onnx(module: torch.nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1, max=64)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module.eval(), (example,), dynamo=True, opset_version=18,
                                    dynamic_shapes=({0: batch},), input_names=["x"], output_names=["y"])
    return program.model_proto


# x*300 fits fp16, its square (up to ~1e6) does not; LayerNorm and Softmax follow, named as
# torch.onnx names FX nodes.
OVERFLOW = make_model(
    [helper.make_node("Mul", ["x", "scale"], ["mul"], name="node_mul"),
     helper.make_node("Mul", ["mul", "mul"], ["mul_1"], name="node_mul_1"),
     helper.make_node("LayerNormalization", ["mul_1", "ln.weight", "ln.bias"], ["layer_norm"], name="node_layer_norm",
                      axis=-1),
     helper.make_node("Add", ["layer_norm", "shift"], ["add"], name="node_add"),
     helper.make_node("Softmax", ["add"], ["y"], name="node_softmax", axis=-1)],
    [("scale", np.float32(300.0)), ("ln.weight", np.ones(16, np.float32)), ("ln.bias", np.zeros(16, np.float32)),
     ("shift", np.float32(0.5))],
)


class OverflowModule(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln = torch.nn.LayerNorm(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x * 300.0
        return torch.softmax(self.ln(h * h) + 0.5, dim=-1)


class ConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(h, 1), 1))


@pytest.fixture(scope="module")
def torch_overflow() -> tuple[onnx.ModelProto, OverflowModule]:
    torch.manual_seed(0)
    module = OverflowModule()
    return export_onnx(module, torch.randn(2, 16)), module


@pytest.fixture(scope="module")
def conv_net() -> tuple[onnx.ModelProto, ConvNet]:
    torch.manual_seed(0)
    module = ConvNet()
    with torch.no_grad():
        module.bn.running_mean.uniform_(-0.5, 0.5)
        module.bn.running_var.uniform_(0.5, 2.0)
    return export_onnx(module, torch.randn(2, 3, 16, 16)), module
