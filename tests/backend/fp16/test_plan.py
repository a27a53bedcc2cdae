"""The fp16 plan: which nodes stay float32 and why (rules, constants, the caller's keep_fp32)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from fxtrt.backend.fp16 import DEFAULT_FP32_OPS, Fp16Graph, convert_to_fp16, repair_fp16
from fxtrt.errors import ConfigError
from tests.backend.fp16.conftest import OVERFLOW, make_model, random_feeds, value_type

RNG = np.random.default_rng(0)


def test_norm_epsilon_and_its_add_stay_fp32() -> None:
    """A decomposed norm: the Add of eps=1e-12 (0 in fp16) stays fp32 with the exact epsilon."""
    model = make_model(
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
    assert value_type(half, "add") == TensorProto.FLOAT
    result = repair_fp16(model, random_feeds(RNG, 2, 3))
    kept = {k.name: k for k in result.kept}
    assert kept["node_add"].rule == "constant" and "1e-12" in kept["node_add"].reason
    assert kept["node_sqrt"].rule == "op_type" and result.passed


def test_keep_fp32_names_nodes_and_rejects_unknown_ones() -> None:
    result = repair_fp16(OVERFLOW, random_feeds(RNG, 2), keep_fp32=["node_mul_1"])
    assert len(result.rounds) == 1 and result.passed
    user = next(k for k in result.kept if k.name == "node_mul_1")
    assert user.rule == "user" and user.round == 0
    with pytest.raises(ConfigError, match="node_mul_2.*did you mean"):
        convert_to_fp16(OVERFLOW, keep_fp32=["node_mul_2"])


def test_plan_pins_sensitive_ops_and_data_movement_follows_its_input() -> None:
    """Softmax stays fp32 by rule; the Reshape after it follows it (no round trip through fp16);
    the Mul after that computes in fp16."""
    model = make_model(
        [helper.make_node("Softmax", ["x"], ["p"], name="node_softmax", axis=-1),
         helper.make_node("Reshape", ["p", "shape"], ["r"], name="node_view"),
         helper.make_node("Mul", ["r", "two"], ["y"], name="node_mul")],
        [("shape", np.array([-1, 16], np.int64)), ("two", np.float32(2.0))],
    )
    graph = Fp16Graph(model, DEFAULT_FP32_OPS)
    kinds, kept = graph.plan({})
    assert kinds == ["fp32", "fp32", "fp16"]
    assert [(k.name, k.rule, k.round) for k in kept] == [("node_softmax", "op_type", 0)]
    kinds, kept = graph.plan(graph.kept_by_user(["node_mul"]))
    assert kinds == ["fp32", "fp32", "fp32"] and kept[-1].rule == "user"

