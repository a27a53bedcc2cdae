"""Materialising a plan: valid, typed fp16 models, and the float32 emulation that shows fp16 overflow."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fxtrt.backend.fp16 import Fp16Graph, convert_to_fp16, materialize, repair_fp16
from tests.backend.fp16.conftest import io_types, make_model, run_model

RNG = np.random.default_rng(0)


def test_emulation_catches_overflow_that_onnxruntime_cpu_hides() -> None:
    """ORT's CPU provider runs this fp16 Mul->Div in fp32 internally and returns x, where a
    GPU computing in fp16 returns inf; repair_fp16 must see the overflow anyway."""
    model = make_model([helper.make_node("Mul", ["x", "x"], ["sq"], name="node_sq"),
                        helper.make_node("Div", ["sq", "x"], ["y"], name="node_div")])
    feed = {"x": np.full((2, 16), 1000.0, np.float32)}
    plain = convert_to_fp16(model, fp32_ops=())
    assert np.isfinite(run_model(plain, feed)["y"]).all()  # what ORT CPU shows
    result = repair_fp16(model, [feed], fp32_ops=())
    # x*x = 1e6 is beyond fp16: its producer and its reader (the Div) go fp32 in one round.
    assert [(k.name, k.round) for k in result.kept] == [("node_sq", 1), ("node_div", 1)]
    assert "produces 'sq'" in result.kept[0].reason and "reads 'sq'" in result.kept[1].reason
    assert len(result.rounds) == 2 and result.passed


def test_keep_io_types_false_gives_an_fp16_interface(conv_net) -> None:
    model, _ = conv_net
    half = convert_to_fp16(model, keep_io_types=False)
    assert io_types(half) == ([TensorProto.FLOAT16], [TensorProto.FLOAT16])
    x = RNG.standard_normal((3, 3, 16, 16)).astype(np.float16)
    out = run_model(half, {"x": x})["y"]
    ref = run_model(model, {"x": x.astype(np.float32)})["y"]
    assert out.dtype == np.float16
    np.testing.assert_allclose(out.astype(np.float32), ref, atol=2e-2, rtol=2e-2)


def test_conversion_gets_right_what_onnxconverter_common_gets_wrong() -> None:
    """mask.float(), a constant shared by an fp32 and an fp16 node, an fp32 node producing the
    graph output, and a -1e9 constant: all valid, typed right, and computed right."""
    model = make_model(
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
    assert io_types(half) == ([TensorProto.FLOAT, TensorProto.BOOL], [TensorProto.FLOAT])
    cast = next(n for n in half.graph.node if n.name == "node__to_copy")
    assert helper.get_attribute_value(cast.attribute[0]) == TensorProto.FLOAT16
    inits = {t.name: numpy_helper.to_array(t) for t in half.graph.initializer}
    assert inits["neg"].dtype == np.float32 and inits["neg"] == np.float32(-1e9)  # not clamped to -1e4
    assert {inits["two"].dtype, inits["two__fp16"].dtype} == {np.dtype(np.float32), np.dtype(np.float16)}
    feed = {"x": RNG.standard_normal((3, 16)).astype(np.float32), "mask": RNG.random((3, 16)) > 0.7}
    np.testing.assert_allclose(run_model(half, feed)["y"], run_model(model, feed)["y"], atol=1e-2, rtol=1e-2)
    assert convert_to_fp16(model).SerializeToString() == half.SerializeToString()  # deterministic


def test_emulation_is_float32_with_every_fp16_value_rounded_by_a_cast_pair() -> None:
    """The emulation keeps float32 types everywhere, and what it computes is the fp16 rounding."""
    model = make_model([helper.make_node("Mul", ["x", "third"], ["y"], name="node_mul")], [("third", np.float32(1 / 3))])
    graph = Fp16Graph(model, ())
    kinds, _ = graph.plan({})
    emulated = materialize(graph, kinds, emulate=True, keep_io_types=True)
    onnx.checker.check_model(emulated, full_check=True)
    casts = [helper.get_attribute_value(n.attribute[0]) for n in emulated.graph.node if n.op_type == "Cast"]
    assert TensorProto.FLOAT16 in casts and TensorProto.FLOAT in casts
    assert all(t.data_type == TensorProto.FLOAT for t in emulated.graph.initializer)
    x = RNG.standard_normal((3, 16)).astype(np.float32)
    want = (x.astype(np.float16) * np.float16(1 / 3)).astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(run_model(emulated, {"x": x})["y"], want, rtol=1e-3, atol=1e-3)

