"""write_model writes the bytes of SerializeToString() one weight at a time: byte for byte the
same file, on fxtrt's own models and on protos that set every kind of field around the graph."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import fxtrt
from fxtrt.backend.protowire import _varint
from fxtrt.backend.stream_write import write_model


def _all_fields() -> onnx.ModelProto:
    """Fields before and after the graph and before and after its initializers, a subgraph,
    a sparse initializer, a function, metadata, and weights whose lengths take 1-3 byte varints."""
    branch = helper.make_graph([helper.make_node("Identity", ["w_small"], ["b"])], "branch", [],
                               [helper.make_tensor_value_info("b", TensorProto.FLOAT, [3])])
    nodes = [helper.make_node("MatMul", ["x", "w_big"], ["y"]),
             helper.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=branch)]
    inits = [numpy_helper.from_array(np.arange(n, dtype=np.float32), f"w{n}") for n in (1, 40, 5000)]
    inits += [numpy_helper.from_array(np.ones((4, 4), np.float32), "w_big"),
              numpy_helper.from_array(np.ones(3, np.float32), "w_small")]
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.ones(2, np.float32), "sv"),
                                       numpy_helper.from_array(np.array([0, 3], np.int64), "si"), [5])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
                                           helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [3])],
                              inits, doc_string="graph doc", sparse_initializer=[sparse])
    graph.metadata_props.add(key="k", value="v")
    fn = helper.make_function("local", "f", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])],
                              [helper.make_opsetid("", 17)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                              functions=[fn], producer_name="p", doc_string="model doc")
    model.metadata_props.add(key="m", value="1")
    return model


def test_a_proto_with_every_kind_of_field_is_written_as_its_serialisation(tmp_path):
    model = _all_fields()
    write_model(model, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == model.SerializeToString()


def test_a_model_without_a_graph_or_weights(tmp_path):
    for model in (onnx.ModelProto(ir_version=8), helper.make_model(helper.make_graph([], "g", [], []))):
        write_model(model, tmp_path / "m.onnx")
        assert (tmp_path / "m.onnx").read_bytes() == model.SerializeToString()


@pytest.mark.parametrize("n", [1, 127, 128, 300, 16383, 16384, 2**21, 2**31 - 1])
def test_varints_are_protobufs(n):
    assert onnx.TensorProto(data_type=n).SerializeToString() == b"\x10" + _varint(n)  # field 2, varint


def test_compile_writes_one_file_as_the_model_serialises(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(64 * 6 * 6, 10)).eval()
    compiled = fxtrt.compile(model, torch.randn(2, 3, 8, 8), batch=(1, 4, 8), out_dir=tmp_path / "o", verify=False)
    assert sorted(p.name for p in compiled.onnx_path.parent.glob("*.data")) == []  # no external weights
    data = compiled.onnx_path.read_bytes()
    assert onnx.load_from_string(data).SerializeToString() == data


def test_a_model_protobuf_could_not_read_back_is_refused_before_a_byte_is_written(tmp_path, monkeypatch):
    import fxtrt.backend.stream_write as sw

    monkeypatch.setattr(sw, "PROTOBUF_MAX", 1000)  # our own limit, lowered: no 2 GB model in a test
    model = _all_fields()
    with pytest.raises(ValueError, match="2 GB"):
        write_model(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
