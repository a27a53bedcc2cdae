"""The ONNX translation of fxtrt's recurrent ops: ONNX's gate order, GRU's linear_before_reset, the
RNN's nonlinearity, one node per layer, and the report note that says so."""
from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

import fxtrt


class Wrapped(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0]


def _compile(rnn: nn.Module):
    model = Wrapped(rnn).eval()
    compiled = fxtrt.compile(model, torch.randn(7, 1, 4), batch=(1, 2, 4), batch_dims=(1,),
                             dynamic={0: {0: (2, 7, 12)}})
    graph = onnx.load(str(compiled.onnx_path)).graph
    return compiled, graph


def _node(graph, op_type: str):
    (node,) = [n for n in graph.node if n.op_type == op_type]
    return node


def _constant(graph, name: str) -> np.ndarray:
    """An input of a node, as cleanup left it: an initializer or a Constant node."""
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    node = next(n for n in graph.node if n.op_type == "Constant" and n.output[0] == name)
    return numpy_helper.to_array(node.attribute[0].t)


def _gates(weight: torch.Tensor, order: tuple[int, ...]) -> np.ndarray:
    return torch.cat([weight.chunk(len(order))[g] for g in order]).detach().numpy()


def test_lstm_weights_are_in_onnx_gate_order_i_o_f_c():
    rnn = nn.LSTM(4, 3)
    _, graph = _compile(rnn)
    lstm = _node(graph, "LSTM")
    w, r, b = (_constant(graph, lstm.input[k]) for k in (1, 2, 3))
    np.testing.assert_array_equal(w[0], _gates(rnn.weight_ih_l0, (0, 3, 1, 2)))  # PyTorch i, f, g, o
    np.testing.assert_array_equal(r[0], _gates(rnn.weight_hh_l0, (0, 3, 1, 2)))
    np.testing.assert_array_equal(b[0, 12:], _gates(rnn.bias_hh_l0, (0, 3, 1, 2)))


def test_gru_has_linear_before_reset_and_gate_order_z_r_h():
    rnn = nn.GRU(4, 3, bidirectional=True)
    compiled, graph = _compile(rnn)
    gru = _node(graph, "GRU")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gru.attribute}
    assert attrs["linear_before_reset"] == 1 and attrs["direction"] == b"bidirectional"
    w = _constant(graph, gru.input[1])
    np.testing.assert_array_equal(w[1], _gates(rnn.weight_ih_l0_reverse, (1, 0, 2)))  # PyTorch r, z, n
    assert any("1 recurrent layer(s) emitted as ONNX GRU" in n and "'rnn'" in n for n in compiled.report.notes)


def test_rnn_relu_is_the_activation_of_every_direction_and_layer():
    rnn = nn.RNN(4, 3, num_layers=2, nonlinearity="relu", bidirectional=True)
    _, graph = _compile(rnn)
    nodes = [n for n in graph.node if n.op_type == "RNN"]
    assert len(nodes) == 2, "one ONNX RNN node per layer"
    for node in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["activations"] == [b"Relu", b"Relu"]
