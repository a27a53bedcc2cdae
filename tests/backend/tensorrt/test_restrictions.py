"""Each static restriction of TensorRT's ONNX parser, checked on one node built with onnx.helper,
against the sentence of the shipped operator table (so the check meets upstream's own wording)."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fxtrt.backend.tensorrt.operator_tables import load_tables
from fxtrt.backend.tensorrt.restrictions import NodeView, check_restrictions

ROWS = load_tables()["10"]["operators"]
F = onnx.TensorProto.FLOAT


def view(node: onnx.NodeProto, *, opset: int = 18, constants: Mapping[str, Any] = (), ranks: Mapping[str, int] = (),
         types: Mapping[str, int] = ()) -> NodeView:
    consts = {k: numpy_helper.from_array(np.asarray(v), k) for k, v in dict(constants).items()}
    return NodeView(node, opset, consts, dict(types), dict(ranks))


def findings(v: NodeView, text: str | None = None) -> list[str]:
    found, _ = check_restrictions(v, ROWS[v.node.op_type]["restrictions"] if text is None else text)
    return [f.reason for f in found]


def test_axes_must_be_a_constant() -> None:
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"])
    assert findings(view(node, constants={"axes": [1]})) == []
    assert findings(view(node)) == ["input `axes` (axes) is computed in the graph, not a constant"]
    squeeze = helper.make_node("Unsqueeze", ["x", "ax"], ["y"])   # "must be a constant tensor"
    assert findings(view(squeeze)) and not findings(view(squeeze, constants={"ax": [0]}))
    # an op whose axes are an attribute at this opset has no input to check
    assert findings(view(helper.make_node("ReduceMax", ["x"], ["y"], axes=[1]), opset=17)) == []


def test_onehot_depth_and_cumsum_axis_must_be_constants() -> None:
    assert findings(view(helper.make_node("OneHot", ["i", "depth", "v"], ["y"])))
    assert not findings(view(helper.make_node("OneHot", ["i", "depth", "v"], ["y"]), constants={"depth": 10}))
    assert findings(view(helper.make_node("CumSum", ["x", "axis"], ["y"])))


def test_pooling_is_2d_or_3d_only() -> None:
    pool = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3])
    found, _ = check_restrictions(view(pool, ranks={"x": 3}), ROWS["MaxPool"]["restrictions"])
    assert [f.reason for f in found] == ["1D pooling"] and "max_pool_1d_as_2d" in found[0].rewrite
    assert found[0].restriction == "2D or 3D pooling only."
    assert findings(view(pool, ranks={"x": 4})) == [] and findings(view(pool, ranks={"x": 5})) == []
    avg = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2, 2, 2])
    assert findings(view(avg, ranks={"x": 6})) == ["4D pooling"]
    assert findings(view(pool)) == []   # rank unknown: nothing to say


def test_dilations_must_be_ones() -> None:
    assert findings(view(helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2]),
                         ranks={"x": 4})) == ["dilations=[2, 2]"]
    assert findings(view(helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[1, 1]),
                         ranks={"x": 4})) == []


def test_maxpool_indices_output_is_unsupported() -> None:
    node = helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2])
    assert findings(view(node, ranks={"x": 4})) == ["uses output `Indices`"]


def test_resize_modes_come_from_the_sentence() -> None:
    ok = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest", nearest_mode="floor",
                          coordinate_transformation_mode="asymmetric")
    assert findings(view(ok, constants={"scales": np.ones(4, np.float32)})) == []
    cubic = helper.make_node("Resize", ["x", "", "s"], ["y"], mode="cubic")
    assert findings(view(cubic, constants={"s": np.ones(4, np.float32)})) == ["mode='cubic'"]
    sym = helper.make_node("Resize", ["x", "", "s"], ["y"], mode="linear",
                           coordinate_transformation_mode="half_pixel_symmetric")
    assert findings(view(sym, constants={"s": np.ones(4, np.float32)})) == [
        "coordinate_transformation_mode='half_pixel_symmetric'"]
    assert findings(view(ok), "Supported nearest modes: `ceil`.") == ["nearest_mode='floor'"]
    linear = helper.make_node("Resize", ["x", "", "s"], ["y"], mode="linear", nearest_mode="floor")
    assert findings(view(linear), "Supported nearest modes: `ceil`.") == []   # nearest_mode only matters for nearest


def test_resize_antialias_and_axes() -> None:
    aa = helper.make_node("Resize", ["x", "", "s"], ["y"], mode="linear", antialias=1)
    assert findings(view(aa, constants={"s": np.ones(4, np.float32)})) == ["antialias=1"]
    axes = helper.make_node("Resize", ["x", "", "s"], ["y"], mode="linear", axes=[2, 3])
    assert findings(view(axes, ranks={"x": 4})) == ["axes=[2, 3] with scales computed in the graph"]
    assert findings(view(axes, ranks={"x": 4}, constants={"s": np.ones(2, np.float32)})) == []


def test_topk_sorted_and_k_limit() -> None:
    topk = helper.make_node("TopK", ["x", "k"], ["v", "i"])
    assert findings(view(topk, constants={"k": [10]})) == []
    assert findings(view(topk, constants={"k": [4000]})) == ["`K` is [4000]"]
    assert findings(view(topk)) == []   # a K computed at run time can't be checked against the limit
    unsorted = helper.make_node("TopK", ["x", "k"], ["v", "i"], sorted=0)
    found, _ = check_restrictions(view(unsorted, constants={"k": [3]}), ROWS["TopK"]["restrictions"])
    assert [f.reason for f in found] == ["`sorted` is 0"] and "sorted=True" in found[0].rewrite


def test_zero_points_must_be_zero() -> None:
    q = helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["y"])
    assert findings(view(q, constants={"s": np.float32(1), "zp": np.int8(0)})) == []
    assert findings(view(q, constants={"s": np.float32(1), "zp": np.int8(3)})) == ["input `y_zero_point` is not 0"]


def test_lstm_layout_and_bidirectional_activations() -> None:
    lstm = helper.make_node("LSTM", ["x", "w", "r"], ["y"], hidden_size=4, layout=1)
    assert findings(view(lstm)) == ["`layout` is 1"]
    bi = helper.make_node("GRU", ["x", "w", "r"], ["y"], hidden_size=4, direction="bidirectional",
                          activations=["Sigmoid", "Tanh", "Sigmoid", "Relu"])
    assert findings(view(bi)) == ["forward activations ['Sigmoid', 'Tanh'] differ from reverse ['Sigmoid', 'Relu']"]
    same = helper.make_node("GRU", ["x", "w", "r"], ["y"], hidden_size=4, direction="bidirectional")
    assert findings(view(same)) == []


def test_layernorm_only_first_output() -> None:
    ln = helper.make_node("LayerNormalization", ["x", "g"], ["y", "mean"])
    assert findings(view(ln)) == ["uses outputs ['mean']"]
    assert findings(view(helper.make_node("LayerNormalization", ["x", "g"], ["y"]))) == []


def test_if_branches_need_distinct_names_and_equal_ranks() -> None:
    def branch(out: str, rank: int) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node("Identity", ["a"], [out])], "b", [],
                                 [helper.make_tensor_value_info(out, F, [1] * rank)])
    same_name = helper.make_node("If", ["c"], ["y"], then_branch=branch("o", 2), else_branch=branch("o", 2))
    assert findings(view(same_name)) == ["both branches output ['o']"]
    ranks = helper.make_node("If", ["c"], ["y"], then_branch=branch("o1", 2), else_branch=branch("o2", 3))
    assert findings(view(ranks)) == ["branch outputs o1 (rank 2) and o2 (rank 3) differ in rank"]


def test_attribute_values_the_parser_refuses() -> None:
    scatter = helper.make_node("ScatterND", ["x", "i", "u"], ["y"], reduction="add")
    assert findings(view(scatter)) == ["`reduction` is 'add'"]
    assert findings(view(helper.make_node("ScatterND", ["x", "i", "u"], ["y"]))) == []
    const = helper.make_node("Constant", [], ["c"], value_string="s")
    assert findings(view(const)) == ["has attribute `value_string`"]
    assert findings(view(helper.make_node("GridSample", ["x", "g"], ["y"]), ranks={"x": 5})) == ["input is 5D"]


def test_sentences_no_check_knows_are_reported_unchecked() -> None:
    node = helper.make_node("Loop", ["m", "c"], ["y"])
    found, unchecked = check_restrictions(view(node), ROWS["Loop"]["restrictions"])
    assert found == [] and unchecked == ["Scan output length cannot be dynamic.",
                                         "The shape of Loop carried dependencies must be the same across all loop iterations."]
