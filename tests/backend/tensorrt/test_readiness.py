"""Readiness of whole ONNX graphs (built with onnx.helper, so fast): op support by type, casts the
tables promise, bodies of If, custom domains, the release with no table, and the report's views."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from fxtrt.backend.tensorrt import tensorrt_status
from fxtrt.backend.tensorrt.operator_tables import load_tables
from fxtrt.backend.tensorrt.readiness import check_readiness, readiness_lines, readiness_record, unsupported_error
from fxtrt.errors import EngineError

T = onnx.TensorProto


def model(nodes, inputs, outputs, inits=(), opset=18) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def info(name, elem, shape=("n", 4)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def trace(file: str, line: int) -> onnx.StringStringEntryProto:
    return onnx.StringStringEntryProto(key="pkg.torch.onnx.stack_trace",
                                       value=f'File "{file}", line {line}, in forward\n    z = x & y')


def bitwise_model() -> onnx.ModelProto:
    node = helper.make_node("BitwiseAnd", ["x", "y"], ["z"], name="node_bitwise_and")
    node.metadata_props.append(trace("/home/user/mymodel.py", 12))
    add = helper.make_node("Add", ["z", "x"], ["out"], name="node_add")
    return model([node, add], [info("x", T.INT64), info("y", T.INT64)], [info("out", T.INT64)])


def test_an_unsupported_op_is_listed_with_the_users_line() -> None:
    r = check_readiness(bitwise_model())["10"]
    assert (r.nodes, r.supported, r.coverage) == (2, 1, 50.0)
    gap = r.unsupported[0]
    assert (gap.node, gap.op, gap.source) == ("node_bitwise_and", "BitwiseAnd", "/home/user/mymodel.py:12")
    assert gap.restriction == "operator table: BitwiseAnd | N" and gap.rewrite is None


def test_bitwise_on_bools_gets_the_logical_op_as_rewrite() -> None:
    node = helper.make_node("BitwiseAnd", ["x", "y"], ["z"], name="b")
    r = check_readiness(model([node], [info("x", T.BOOL), info("y", T.BOOL)], [info("z", T.BOOL)]))["10"]
    assert "And" in r.unsupported[0].rewrite


def test_types_the_op_does_not_take_are_gaps_and_double_is_cast_down() -> None:
    floor = helper.make_node("Floor", ["x"], ["y"], name="floor")
    r = check_readiness(model([floor], [info("x", T.INT64)], [info("y", T.INT64)]))["10"]
    assert r.unsupported[0].reason == "input x is INT64; Floor takes FP32, FP16, BF16"
    assert r.unsupported[0].restriction == "Supported Types: FP32, FP16, BF16" and "float32" in r.unsupported[0].rewrite
    r = check_readiness(model([floor], [info("x", T.DOUBLE)], [info("y", T.DOUBLE)]))["10"]
    assert r.coverage == 100.0 and r.casts == {"DOUBLE->FP32": 2}   # the table's note: DOUBLE is cast to FLOAT
    shape = helper.make_node("Shape", ["x"], ["s"], name="shape")  # its INT64 output is not "the op's type"
    assert check_readiness(model([shape], [info("x", T.FLOAT)], [info("s", T.INT64, [2])]))["10"].coverage == 100.0


def test_uint8_only_at_the_network_edge() -> None:
    a = helper.make_node("Cast", ["x"], ["u"], to=T.UINT8, name="to_u8")
    b = helper.make_node("Cast", ["u"], ["y"], to=T.FLOAT, name="from_u8")
    r = check_readiness(model([a, b], [info("x", T.FLOAT)], [info("y", T.FLOAT)]))["10"]
    assert [g.node for g in r.unsupported] == ["to_u8", "from_u8"]
    assert "inside the network" in r.unsupported[0].reason


def test_bodies_of_if_are_checked_and_named_under_their_parent() -> None:
    body = helper.make_graph([helper.make_node("BitwiseNot", ["x"], ["o"], name="inner")], "then", [],
                             [info("o", T.INT32)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["o2"], name="id")], "else", [],
                              [info("o2", T.INT32)])
    node = helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=other, name="cond")
    node.metadata_props.append(trace("/home/user/m.py", 30))
    r = check_readiness(model([node], [info("c", T.BOOL, []), info("x", T.INT32)], [info("y", T.INT32)]))["10"]
    assert r.nodes == 3
    assert [(g.node, g.source) for g in r.unsupported] == [("cond/then_branch/inner", "/home/user/m.py:30")]


def test_custom_domains_need_a_plugin_and_data_dependent_ops_are_noted() -> None:
    custom = helper.make_node("Fancy", ["x"], ["y"], domain="com.example", name="fancy")
    nz = helper.make_node("NonZero", ["y"], ["idx"], name="nz")
    m = model([custom, nz], [info("x", T.FLOAT)], [info("idx", T.INT64, [2, "k"])])
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    r = check_readiness(m)["10"]
    assert "plugin" in r.unsupported[0].reason and r.data_dependent == [{"node": "nz", "op": "NonZero", "source": None}]


def test_constant_nodes_count_as_constants_for_restrictions() -> None:
    axes = helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.array([1], np.int64)))
    red = helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="sum")
    assert check_readiness(model([axes, red], [info("x", T.FLOAT)], [info("y", T.FLOAT, ["n", 1])]))["10"].coverage == 100
    shape = helper.make_node("Shape", ["x"], ["s"], start=1, name="shape")
    red2 = helper.make_node("ReduceSum", ["x", "s"], ["y"], name="sum2")
    r = check_readiness(model([shape, red2], [info("x", T.FLOAT)], [info("y", T.FLOAT, ["n", 1])]))["10"]
    assert [g.node for g in r.unsupported] == ["sum2"] and r.unsupported[0].restriction == "`axes` must be an initializer"


def test_record_text_and_strict_error() -> None:
    record = readiness_record(check_readiness(bitwise_model()))
    ten = record["tensorrt"]["10"]
    assert ten["unsupported"][0] == {"node": "node_bitwise_and", "op": "BitwiseAnd", "reason":
                                     "BitwiseAnd is not supported by the parser", "source": "/home/user/mymodel.py:12",
                                     "restriction": "operator table: BitwiseAnd | N"}
    assert ten["table"]["repo"] == "onnx/onnx-tensorrt" and len(ten["table"]["commit"]) == 40
    text = "\n".join(readiness_lines(record))
    assert "1/2 nodes supported (50.0%)" in text and "BitwiseAnd x1" in text and "/home/user/mymodel.py:12" in text
    error = unsupported_error(record)
    assert isinstance(error, EngineError) and error.source == "/home/user/mymodel.py:12"
    assert "node_bitwise_and (BitwiseAnd) at /home/user/mymodel.py:12" in str(error)


def test_a_release_without_a_shipped_table_is_not_checked_rather_than_passed() -> None:
    results = check_readiness(bitwise_model(), tables={"10": load_tables()["10"]})
    assert results["11"] is None
    rec = readiness_record(results)["tensorrt"]["11"]
    assert rec["checked"] is False and "11.x" in rec["reason"] and "coverage" not in rec
    assert "TensorRT 11: not checked" in "\n".join(readiness_lines(readiness_record(results)))


def test_agrees_with_the_parsers_own_supports_model_v2() -> None:
    ok, why = tensorrt_status()
    if not ok:
        pytest.skip(f"TensorRT's parser is not usable here ({why}); the readiness check stands on the tables alone")
    import tensorrt as trt  # pragma: no cover - needs TensorRT and a GPU

    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    m = bitwise_model()
    ours = check_readiness(m)[str(int(trt.__version__.split(".")[0]))]
    theirs = parser.supports_model_v2(m.SerializeToString())
    assert theirs == (ours.coverage == 100.0), [parser.get_error(i).desc() for i in range(parser.num_errors)]
