"""fp16 by ONNX types: conversion, the fp16 emulation, and the repair loop.

Real onnx, onnxruntime and torch.onnx.export; small models so the file runs in seconds.
"""
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

from fxtrt.backend.fp16 import DEFAULT_FP32_OPS, convert_to_fp16, repair_fp16
from fxtrt.errors import ConfigError, PrecisionError

RNG = np.random.default_rng(0)


def _model(nodes, inits=(), inputs=(("x", TensorProto.FLOAT, ["batch", 16]),),
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


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


def _io_types(model: onnx.ModelProto) -> tuple[list[int], list[int]]:
    return ([vi.type.tensor_type.elem_type for vi in model.graph.input],
            [vi.type.tensor_type.elem_type for vi in model.graph.output])


def _value_type(model: onnx.ModelProto, name: str) -> int:
    inferred = onnx.shape_inference.infer_shapes(model)
    for vi in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input):
        if vi.name == name:
            return vi.type.tensor_type.elem_type
    raise KeyError(name)


def _feeds(*batches: int, scale: float = 1.0) -> list[dict[str, np.ndarray]]:
    return [{"x": (RNG.standard_normal((b, 16)) * scale).astype(np.float32)} for b in batches]


def _export(module: torch.nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1, max=64)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module.eval(), (example,), dynamo=True, opset_version=18,
                                    dynamic_shapes=({0: batch},), input_names=["x"], output_names=["y"])
    return program.model_proto


# x*300 fits fp16, its square (up to ~1e6) does not; LayerNorm and Softmax follow, named as
# torch.onnx names FX nodes.
OVERFLOW = _model(
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


# --------------------------------------------------------------------------- overflow and repair


def test_plain_cast_overflows_and_repair_keeps_the_overflowing_mul() -> None:
    feeds = _feeds(1, 4)
    plain = repair_fp16(OVERFLOW, feeds, fp32_ops=(), max_rounds=0, raise_on_failure=False)
    assert not plain.passed
    (fig,) = plain.rounds[0].outputs
    assert fig.nonfinite > 0 and not fig.passed
    assert plain.rounds[0].first_divergence == ("mul_1",)

    result = repair_fp16(OVERFLOW, feeds)
    assert result.passed and len(result.rounds) == 2
    by_rule = {k.name: k for k in result.kept}
    assert set(by_rule) == {"node_mul_1", "node_layer_norm", "node_softmax"}
    mul = by_rule["node_mul_1"]
    assert (mul.op_type, mul.outputs, mul.rule, mul.round) == ("Mul", ("mul_1",), "diverged", 1)
    assert "beyond fp16" in mul.reason
    assert by_rule["node_layer_norm"].rule == by_rule["node_softmax"].rule == "op_type"
    # The x*300 before it still runs in fp16; the square and the norm in fp32.
    assert _value_type(result.model, "mul") == TensorProto.FLOAT16
    assert _value_type(result.model, "mul_1") == TensorProto.FLOAT
    assert result.rounds[-1].ort_outputs[0].passed and result.rounds[-1].outputs[0].max_abs < 1e-2
    onnx.checker.check_model(result.model, full_check=True)
    assert _io_types(result.model) == ([TensorProto.FLOAT], [TensorProto.FLOAT])


@pytest.fixture(scope="module")
def torch_overflow() -> tuple[onnx.ModelProto, OverflowModule]:
    torch.manual_seed(0)
    module = OverflowModule()
    return _export(module, torch.randn(2, 16)), module


def test_repair_on_a_torch_export_against_the_torch_reference(torch_overflow) -> None:
    model, module = torch_overflow
    feeds = _feeds(1, 5)
    with torch.no_grad():
        reference = [{"y": module(torch.from_numpy(f["x"])).numpy()} for f in feeds]
    result = repair_fp16(model, feeds, reference)
    diverged = [k for k in result.kept if k.rule == "diverged"]
    assert result.passed and len(diverged) == 1
    (square,) = diverged
    ln = next(n for n in model.graph.node if n.op_type == "LayerNormalization")
    assert square.op_type == "Mul" and square.outputs == (ln.input[0],) and square.name.startswith("node_mul")
    assert {k.name for k in result.kept if k.rule == "op_type"} == {"node_layer_norm", "node_softmax"}
    # The dynamic batch survives; the fp16 model runs at a size it wasn't repaired at.
    assert result.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = RNG.standard_normal((9, 16)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run(result.model, {"x": x})["y"], want, atol=1e-2, rtol=1e-2)


def test_fp32_node_that_amplifies_rounding_gets_its_fp16_producer_kept() -> None:
    """Softmax (fp32) of logits near 200: fp16 rounds them by up to 0.06, enough to move the
    probabilities by several percent, so the Mul that makes the logits must stay fp32 too."""
    model = _model(
        [helper.make_node("Mul", ["x", "scale"], ["logits"], name="node_mul_logits"),
         helper.make_node("Softmax", ["logits"], ["y"], name="node_softmax", axis=-1)],
        [("scale", np.float32(100.0))],
    )
    feeds = [{"x": (2 + 0.01 * RNG.standard_normal((b, 16))).astype(np.float32)} for b in (1, 3)]
    result = repair_fp16(model, feeds)
    (k,) = [k for k in result.kept if k.rule == "diverged"]
    assert k.name == "node_mul_logits" and "feeds node_softmax" in k.reason
    assert result.rounds[0].first_divergence == ("y",) and result.passed


def test_emulation_catches_overflow_that_onnxruntime_cpu_hides() -> None:
    """ORT's CPU provider runs this fp16 Mul->Div in fp32 internally and returns x, where a
    GPU computing in fp16 returns inf; repair_fp16 must see the overflow anyway."""
    model = _model([helper.make_node("Mul", ["x", "x"], ["sq"], name="node_sq"),
                    helper.make_node("Div", ["sq", "x"], ["y"], name="node_div")])
    feed = {"x": np.full((2, 16), 1000.0, np.float32)}
    plain = convert_to_fp16(model, fp32_ops=())
    assert np.isfinite(_run(plain, feed)["y"]).all()  # what ORT CPU shows
    result = repair_fp16(model, [feed], fp32_ops=())
    # x*x = 1e6 is beyond fp16: its producer and its reader (the Div) go fp32 in one round.
    assert [(k.name, k.round) for k in result.kept] == [("node_sq", 1), ("node_div", 1)]
    assert "produces 'sq'" in result.kept[0].reason and "reads 'sq'" in result.kept[1].reason
    assert len(result.rounds) == 2 and result.passed


# --------------------------------------------------------------------------- ordinary models


@pytest.fixture(scope="module")
def conv_net() -> tuple[onnx.ModelProto, ConvNet]:
    torch.manual_seed(0)
    module = ConvNet()
    with torch.no_grad():
        module.bn.running_mean.uniform_(-0.5, 0.5)
        module.bn.running_var.uniform_(0.5, 2.0)
    return _export(module, torch.randn(2, 3, 16, 16)), module


def test_conv_linear_model_converts_and_verifies_at_fp16_tolerances(conv_net) -> None:
    model, module = conv_net
    feeds = [{"x": RNG.standard_normal((b, 3, 16, 16)).astype(np.float32)} for b in (1, 6)]
    with torch.no_grad():
        reference = [{"y": module(torch.from_numpy(f["x"])).numpy()} for f in feeds]
    result = repair_fp16(model, feeds, reference, atol=1e-2, rtol=1e-2)
    assert result.passed and len(result.rounds) == 1
    assert not [k for k in result.kept if k.rule == "diverged"]
    assert {k.op_type for k in result.kept} <= set(DEFAULT_FP32_OPS)
    conv = next(n for n in result.model.graph.node if n.op_type == "Conv")
    weights = {t.name: t for t in result.model.graph.initializer}
    assert weights[conv.input[1]].data_type == TensorProto.FLOAT16
    for f, r in zip(feeds, reference):
        np.testing.assert_allclose(_run(result.model, f)["y"], r["y"], atol=1e-2, rtol=1e-2)


def test_keep_io_types_false_gives_an_fp16_interface(conv_net) -> None:
    model, _ = conv_net
    half = convert_to_fp16(model, keep_io_types=False)
    assert _io_types(half) == ([TensorProto.FLOAT16], [TensorProto.FLOAT16])
    x = RNG.standard_normal((3, 3, 16, 16)).astype(np.float16)
    out = _run(half, {"x": x})["y"]
    ref = _run(model, {"x": x.astype(np.float32)})["y"]
    assert out.dtype == np.float16
    np.testing.assert_allclose(out.astype(np.float32), ref, atol=2e-2, rtol=2e-2)


def test_conversion_gets_right_what_onnxconverter_common_gets_wrong() -> None:
    """mask.float(), a constant shared by an fp32 and an fp16 node, an fp32 node producing the
    graph output, and a -1e9 constant: all valid, typed right, and computed right."""
    model = _model(
        [helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT, name="node__to_copy"),
         helper.make_node("Mul", ["m", "neg"], ["masked"], name="node_mul_mask"),
         helper.make_node("Add", ["x", "two"], ["a"], name="node_add"),
         helper.make_node("Pow", ["a", "two"], ["p"], name="node_pow"),
         helper.make_node("Add", ["p", "masked"], ["s"], name="node_add_1"),
         helper.make_node("Softmax", ["s"], ["y"], name="node_softmax", axis=-1)],
        [("two", np.float32(2.0)), ("neg", np.float32(-1e9))],
        inputs=(("x", TensorProto.FLOAT, ["batch", 16]), ("mask", TensorProto.BOOL, ["batch", 16])),
    )
    half = convert_to_fp16(model)
    onnx.checker.check_model(half, full_check=True)
    assert _io_types(half) == ([TensorProto.FLOAT, TensorProto.BOOL], [TensorProto.FLOAT])
    cast = next(n for n in half.graph.node if n.name == "node__to_copy")
    assert helper.get_attribute_value(cast.attribute[0]) == TensorProto.FLOAT16
    inits = {t.name: numpy_helper.to_array(t) for t in half.graph.initializer}
    assert inits["neg"].dtype == np.float32 and inits["neg"] == np.float32(-1e9)  # not clamped to -1e4
    assert {inits["two"].dtype, inits["two__fp16"].dtype} == {np.dtype(np.float32), np.dtype(np.float16)}
    feed = {"x": RNG.standard_normal((3, 16)).astype(np.float32), "mask": RNG.random((3, 16)) > 0.7}
    np.testing.assert_allclose(_run(half, feed)["y"], _run(model, feed)["y"], atol=1e-2, rtol=1e-2)
    assert convert_to_fp16(model).SerializeToString() == half.SerializeToString()  # deterministic


def test_norm_epsilon_and_its_add_stay_fp32() -> None:
    """A decomposed norm: the Add of eps=1e-12 (0 in fp16) stays fp32 with the exact epsilon."""
    model = _model(
        [helper.make_node("ReduceMean", ["x", "axes"], ["mean"], name="node_mean"),
         helper.make_node("Sub", ["x", "mean"], ["sub"], name="node_sub"),
         helper.make_node("Mul", ["sub", "sub"], ["sq"], name="node_mul"),
         helper.make_node("ReduceMean", ["sq", "axes"], ["var"], name="node_mean_1"),
         helper.make_node("Add", ["var", "eps"], ["add"], name="node_add"),
         helper.make_node("Sqrt", ["add"], ["std"], name="node_sqrt"),
         helper.make_node("Div", ["sub", "std"], ["y"], name="node_div")],
        [("axes", np.array([-1], np.int64)), ("eps", np.float32(1e-12))],
    )
    half = convert_to_fp16(model)
    eps = next(t for t in half.graph.initializer if t.name == "eps")
    assert eps.data_type == TensorProto.FLOAT and numpy_helper.to_array(eps) == np.float32(1e-12)
    assert _value_type(half, "add") == TensorProto.FLOAT
    result = repair_fp16(model, _feeds(2, 3))
    kept = {k.name: k for k in result.kept}
    assert kept["node_add"].rule == "constant" and "1e-12" in kept["node_add"].reason
    assert kept["node_sqrt"].rule == "op_type" and result.passed


# --------------------------------------------------------------------------- arguments and failures


def test_keep_fp32_names_nodes_and_rejects_unknown_ones() -> None:
    result = repair_fp16(OVERFLOW, _feeds(2), keep_fp32=["node_mul_1"])
    assert len(result.rounds) == 1 and result.passed
    user = next(k for k in result.kept if k.name == "node_mul_1")
    assert user.rule == "user" and user.round == 0
    with pytest.raises(ConfigError, match="node_mul_2.*did you mean"):
        convert_to_fp16(OVERFLOW, keep_fp32=["node_mul_2"])


def test_precision_error_when_nothing_is_left_to_keep() -> None:
    """With fp16 inputs, an input of 1e5 is inf before any node runs: no repair can help."""
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="node_relu")])
    feeds = [{"x": np.full((2, 16), 1e5, np.float32)}]
    with pytest.raises(PrecisionError, match="nothing is left to keep") as info:
        repair_fp16(model, feeds, keep_io_types=False)
    err = info.value
    assert "max_abs" in str(err) and "node_relu" in str(err)
    assert not err.result.passed and [k.name for k in err.result.kept] == ["node_relu"]
    assert err.rows and err.rows[-1]["passed"] is False


def test_fp32_model_must_match_the_reference_first() -> None:
    feeds = _feeds(2)
    wrong = [{"y": np.zeros((2, 16), np.float32)}]
    with pytest.raises(PrecisionError, match="float32 ONNX model itself"):
        repair_fp16(OVERFLOW, feeds, wrong)


def test_result_is_json_able() -> None:
    import json

    result = repair_fp16(OVERFLOW, _feeds(2))
    data = json.loads(json.dumps(result.to_dict()))
    assert data["passed"] is True and data["kept"][0]["name"] == "node_mul_1"
    meta = {p.key: p.value for p in result.model.metadata_props}
    assert meta["fxtrt.precision"] == "fp16" and "node_mul_1" in meta["fxtrt.fp32_nodes"].split(",")
