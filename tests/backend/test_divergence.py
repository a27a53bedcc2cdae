"""The layer-wise search finds a divergence planted in the emitted ONNX."""
import onnx
import onnx.numpy_helper
import pytest
import torch

import fxtrt
from fxtrt.backend.divergence import find_divergence
from fxtrt.backend.verify import VerifyRow, raise_on_failure
from tests import seed_models as sm


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("div") / "out"
    return fxtrt.compile(sm.IntSizeView().eval(), torch.randn(1, 3, 16, 16), batch=(1, 4, 8), out_dir=out,
                         trace_divergence=True)


def plant(compiled, tmp_path, initializer: str):
    model = onnx.load(str(compiled.onnx_path))
    for init in model.graph.initializer:
        if init.name == initializer:
            arr = onnx.numpy_helper.to_array(init).copy()
            arr.flat[0] += 1.0
            init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    path = tmp_path / "planted.onnx"
    onnx.save(model, str(path))
    return path


def search(compiled, path):
    x = torch.randn(3, 3, 16, 16)
    return find_divergence(path, compiled.graph_module, [x], {"x": x.numpy()}, 1e-4, 1e-3)


def test_clean_model_has_no_divergence(compiled):
    assert search(compiled, compiled.onnx_path) is None
    assert compiled.report.stages["divergence"] == {"result": "no ONNX value differs from the FX graph"}


@pytest.mark.parametrize(
    "initializer, onnx_node, fx_node, line_offset",
    [("conv.bias", "node_conv2d", "conv2d", -1), ("fc.bias", "node_linear", "linear", +1)],
)
def test_planted_constant_is_found(compiled, tmp_path, initializer, onnx_node, fx_node, line_offset):
    names = {i.name for i in onnx.load(str(compiled.onnx_path)).graph.initializer}
    assert initializer in names
    found = search(compiled, plant(compiled, tmp_path, initializer))
    assert found is not None
    assert (found.onnx_node, found.fx_node) == (onnx_node, fx_node)
    assert found.source.endswith(f"seed_models.py:{sm.line_of(sm.IntSizeView, 'int-view') + line_offset}")
    assert found.max_abs >= 0.5


def test_verification_error_names_the_divergence(compiled, tmp_path):
    found = search(compiled, plant(compiled, tmp_path, "fc.bias"))
    rows = [VerifyRow({"batch": 3}, "output", (3, 10), 1.0, 1.0, False)]
    with pytest.raises(fxtrt.VerificationError) as info:
        raise_on_failure(rows, 1e-4, 1e-3, found)
    assert info.value.node == "node_linear" and info.value.source == found.source
    assert "first divergence: ONNX node node_linear (Gemm)" in str(info.value)


class _AddOne(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x) + 1.0


def _break_adds(gm, ctx):
    """A pass that changes the numerics: every add becomes a subtraction."""
    from fxtrt.passes.infra import PassResult

    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target == torch.ops.aten.add.Tensor:
            node.target = torch.ops.aten.sub.Tensor
    gm.recompile()
    return PassResult(gm, [])


def test_a_pass_that_breaks_the_numerics_is_named_only_after_comparing_graphs(tmp_path):
    import fxtrt

    with pytest.raises(fxtrt.VerificationError) as info:
        fxtrt.compile(_AddOne(), torch.randn(1, 4), batch=(1, 2, 4), passes=["relax_views", _break_adds],
                      out_dir=tmp_path / "out")
    message = str(info.value)
    assert "the graph torch.export captured matches the model, and after the passes it does not" in message
    assert "debug_dir" in info.value.hint


def test_a_graph_that_matches_the_model_is_not_blamed_on_the_passes():
    from fxtrt.backend.divergence import GraphVerdict

    verdict = GraphVerdict(captured_matches=False, final_matches=False, sizes={"batch": 3})
    assert "before any pass ran" in verdict.describe() and "pass changed" not in verdict.describe()
    assert "cannot tell" in GraphVerdict(None, False, {"batch": 3}).describe()


def test_a_sequence_valued_intermediate_is_left_out_of_the_comparison(tmp_path):
    """ultralytics RT-DETR's graph holds a SplitToSequence: marking every value as an output made
    divergence tracing fail on it (a raw ValueError from numpy inside a VerificationError)."""
    import numpy as np
    from onnx import TensorProto, helper

    from fxtrt.backend.divergence import onnx_values

    nodes = [helper.make_node("SplitToSequence", ["x"], ["seq"], axis=0),
             helper.make_node("ConcatFromSequence", ["seq"], ["y"], axis=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 2])])
    path = tmp_path / "seq.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    _, values = onnx_values(path, {"x": x})
    assert set(values) == {"x", "y"} or set(values) == {"y"}, values.keys()
    np.testing.assert_array_equal(values["y"], x)
