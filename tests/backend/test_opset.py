"""Down-conversion 18 → 17 on real torch.onnx output, run by ONNX Runtime."""
import numpy as np
import onnxruntime as ort
import pytest
import torch

from fxtrt.backend.opset import convert_opset, opset_of
from fxtrt.errors import EmitError


def export18(model, x):
    program = torch.onnx.export(model, (x,), dynamo=True, opset_version=18, verbose=False,
                                dynamic_shapes=({0: torch.export.Dim("batch")},))
    return program.model_proto


def run(model_proto, x):
    sess = ort.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


class MeanAndChunk(torch.nn.Module):
    def forward(self, x):
        a, b = x.mean((2, 3)).chunk(2, dim=1)
        return a * b.amax(1, keepdim=True)


def test_reduce_and_split_come_down_to_17_and_still_run():
    x = torch.randn(3, 4, 5, 5)
    m18 = export18(MeanAndChunk(), x)
    assert {"ReduceMean", "Split"} <= {n.op_type for n in m18.graph.node}
    m17 = convert_opset(m18, 17)
    assert opset_of(m17) == 17
    reduce = next(n for n in m17.graph.node if n.op_type == "ReduceMean")
    assert [a.name for a in reduce.attribute if a.name == "axes"] == ["axes"] and len(reduce.input) == 1
    assert not any(a.name == "num_outputs" for n in m17.graph.node for a in n.attribute)
    np.testing.assert_allclose(run(m17, x), MeanAndChunk()(x).numpy(), rtol=1e-5, atol=1e-6)


def test_onnx_version_converter_alone_fails_on_split():
    """Why opset.py exists: ONNX 1.23's converter has no Split adapter from 18 down."""
    import onnx.version_converter

    m18 = export18(MeanAndChunk(), torch.randn(2, 4, 5, 5))
    with pytest.raises(Exception, match="Split"):
        onnx.version_converter.convert_version(m18, 17)


def test_uneven_split_is_refused_at_17():
    from onnx import TensorProto, helper

    node = helper.make_node("Split", ["x"], ["a", "b"], name="split_uneven", axis=1, num_outputs=2)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("a", "b")])
    m18 = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(EmitError, match="opset 18") as info:
        convert_opset(m18, 17)
    assert info.value.node == "split_uneven"


def test_lower_opsets_go_through_onnx_converter():
    x = torch.randn(2, 4, 5, 5)
    m = convert_opset(export18(MeanAndChunk(), x), 16)
    assert opset_of(m) == 16
    np.testing.assert_allclose(run(m, x), MeanAndChunk()(x).numpy(), rtol=1e-5, atol=1e-6)


def test_a_conversion_onnx_cannot_do_is_a_clear_error():
    # ONNX 1.23 has no Mul adapter from 14 down to 13.
    with pytest.raises(EmitError, match="opset 17 to 13") as info:
        convert_opset(export18(MeanAndChunk(), torch.randn(2, 4, 5, 5)), 13)
    assert "opset=17" in info.value.hint


class MeanInABranch(torch.nn.Module):
    """torch.cond's branches become If subgraphs: their Reduce and Split come down to 17 too."""

    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda x: x.mean((2, 3)).chunk(2, dim=1)[0] * 2, lambda x: x[:, :2, 0, 0] - 1, (x,))


def test_reduce_and_split_inside_an_if_branch_come_down_to_17():
    model = MeanInABranch()
    m17 = convert_opset(export18(model, torch.randn(3, 4, 5, 5)), 17)

    def nodes(graph):
        for n in graph.node:
            yield n
            for a in n.attribute:
                if a.type == a.GRAPH:
                    yield from nodes(a.g)

    reduce = next(n for n in nodes(m17.graph) if n.op_type == "ReduceMean")
    assert [a.name for a in reduce.attribute] == ["keepdims", "axes"] and len(reduce.input) == 1
    for sign in (1, -1):
        x = sign * torch.rand(3, 4, 5, 5)
        np.testing.assert_allclose(run(m17, x), model(x).numpy(), rtol=1e-5, atol=1e-6)
