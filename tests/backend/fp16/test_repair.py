"""The repair loop: overflow found and kept in fp32, against the ONNX model's or PyTorch's outputs."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from fxtrt.backend.fp16 import DEFAULT_FP32_OPS, repair_fp16
from fxtrt.errors import PrecisionError
from tests.backend.fp16.conftest import OVERFLOW, io_types, make_model, random_feeds, run_model, value_type

RNG = np.random.default_rng(0)


def test_plain_cast_overflows_and_repair_keeps_the_overflowing_mul() -> None:
    feeds = random_feeds(RNG, 1, 4)
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
    assert value_type(result.model, "mul") == TensorProto.FLOAT16
    assert value_type(result.model, "mul_1") == TensorProto.FLOAT
    assert result.rounds[-1].ort_outputs[0].passed and result.rounds[-1].outputs[0].max_abs < 1e-2
    onnx.checker.check_model(result.model, full_check=True)
    assert io_types(result.model) == ([TensorProto.FLOAT], [TensorProto.FLOAT])


def test_repair_on_a_torch_export_against_the_torch_reference(torch_overflow) -> None:
    model, module = torch_overflow
    feeds = random_feeds(RNG, 1, 5)
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
    np.testing.assert_allclose(run_model(result.model, {"x": x})["y"], want, atol=1e-2, rtol=1e-2)


def test_fp32_node_that_amplifies_rounding_gets_its_fp16_producer_kept() -> None:
    """Softmax (fp32) of logits near 200: fp16 rounds them by up to 0.06, enough to move the
    probabilities by several percent, so the Mul that makes the logits must stay fp32 too."""
    model = make_model(
        [helper.make_node("Mul", ["x", "scale"], ["logits"], name="node_mul_logits"),
         helper.make_node("Softmax", ["logits"], ["y"], name="node_softmax", axis=-1)],
        [("scale", np.float32(100.0))],
    )
    feeds = [{"x": (2 + 0.01 * RNG.standard_normal((b, 16))).astype(np.float32)} for b in (1, 3)]
    result = repair_fp16(model, feeds)
    (k,) = [k for k in result.kept if k.rule == "diverged"]
    assert k.name == "node_mul_logits" and "feeds node_softmax" in k.reason
    assert result.rounds[0].first_divergence == ("y",) and result.passed


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
        np.testing.assert_allclose(run_model(result.model, f)["y"], r["y"], atol=1e-2, rtol=1e-2)


def test_precision_error_when_nothing_is_left_to_keep() -> None:
    """With fp16 inputs, an input of 1e5 is inf before any node runs: no repair can help."""
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="node_relu")])
    feeds = [{"x": np.full((2, 16), 1e5, np.float32)}]
    with pytest.raises(PrecisionError, match="nothing is left to keep") as info:
        repair_fp16(model, feeds, keep_io_types=False)
    err = info.value
    assert "max_abs" in str(err) and "node_relu" in str(err)
    assert not err.result.passed and [k.name for k in err.result.kept] == ["node_relu"]
    assert err.rows and err.rows[-1]["passed"] is False


def test_fp32_model_must_match_the_reference_first() -> None:
    feeds = random_feeds(RNG, 2)
    wrong = [{"y": np.zeros((2, 16), np.float32)}]
    with pytest.raises(PrecisionError, match="float32 ONNX model itself"):
        repair_fp16(OVERFLOW, feeds, wrong)


def test_result_is_json_able() -> None:
    import json

    result = repair_fp16(OVERFLOW, random_feeds(RNG, 2))
    data = json.loads(json.dumps(result.to_dict()))
    assert data["passed"] is True and data["kept"][0]["name"] == "node_mul_1"
    meta = {p.key: p.value for p in result.model.metadata_props}
    assert meta["fxtrt.precision"] == "fp16" and "node_mul_1" in meta["fxtrt.fp32_nodes"].split(",")
