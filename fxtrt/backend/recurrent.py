"""ONNX for the recurrent ops of :mod:`fxtrt.frontend.recurrent`: one ONNX ``LSTM`` / ``GRU`` /
``RNN`` node per layer (a bidirectional layer is one node, ``direction="bidirectional"``), with
batch and sequence length symbolic. torch.onnx takes these through ``custom_translation_table``.

    fxtrt::lstm(x, h0, c0, [w_ih, w_hh, b_ih, b_hh], True, 32, 1, False, True)    # x: (B, T, 80)
    ->  Transpose(x) -> LSTM(X, W, R, B, '', h0, c0, hidden_size=32)   # h0, c0 None: omitted
        -> Transpose, Reshape (T, D, B, H) -> (T, B, D*H) -> Transpose back to (B, T, D*H)

Weights are reordered to ONNX's gate order by a ``Gather`` of fixed rows, which cleanup folds
into the initializers: PyTorch's LSTM gates are i, f, g, o and ONNX's i, o, f, c; PyTorch's GRU
gates are r, z, n and ONNX's z, r, h, and ONNX's GRU needs ``linear_before_reset=1`` to compute
PyTorch's ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``. An RNN's single gate needs no
reordering; its nonlinearity is the ``activations`` attribute.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, TypeVar, Union

import torch.fx
from onnxscript import DOUBLE, FLOAT, FLOAT16
from onnxscript import opset18 as op

from fxtrt.frontend.recurrent import GRU, LSTM, RNN
from fxtrt.frontend.source import module_path_of, source_of

# Rows of PyTorch's stacked gate weights, in ONNX's gate order, in units of hidden_size.
LSTM_GATES = (0, 3, 1, 2)  # i, f, g, o -> i, o, f, c
GRU_GATES = (1, 0, 2)      # r, z, n    -> z, r, h
RNN_GATES = (0,)

# What the translations take (their signature tells torch.onnx which arguments are tensors)
TFloat = TypeVar("TFloat", bound=Union[FLOAT16, FLOAT, DOUBLE])


def _rows(gates: Sequence[int], hidden_size: int) -> list[int]:
    return [g * hidden_size + i for g in gates for i in range(hidden_size)]


def _layer_weights(params: Sequence, layer: int, dirs: int, has_biases: bool, gates: Sequence[int], hidden_size: int):
    """W, R and B (or None) of one layer, in ONNX's gate order, directions stacked."""
    per_dir = 4 if has_biases else 2
    rows = op.Constant(value_ints=_rows(gates, hidden_size))
    ws, rs, bs = [], [], []
    for d in range(dirs):
        first = (layer * dirs + d) * per_dir
        ws.append(op.Unsqueeze(op.Gather(params[first], rows, axis=0), [0]))
        rs.append(op.Unsqueeze(op.Gather(params[first + 1], rows, axis=0), [0]))
        if has_biases:
            b_ih, b_hh = (op.Gather(params[first + k], rows, axis=0) for k in (2, 3))
            b = op.Concat(b_ih, b_hh, axis=0)  # ONNX's B is [Wb, Rb]
            bs.append(op.Unsqueeze(b, [0]))

    def stack(values):
        return values[0] if len(values) == 1 else op.Concat(*values, axis=0)

    return stack(ws), stack(rs), (stack(bs) if bs else None)


def _recurrence(cell: Callable, input, states: Sequence, params: Sequence, has_biases: bool, hidden_size: int,
                num_layers: int, bidirectional: bool, batch_first: bool, gates: Sequence[int]):
    """Run ``cell`` (one ONNX node per layer) over the layers; the output and each state, stacked
    over the layers as PyTorch returns them."""
    dirs = 2 if bidirectional else 1
    x = op.Transpose(input, perm=[1, 0, 2]) if batch_first else input  # (T, B, F)
    finals: list[list] = [[] for _ in states]
    for layer in range(num_layers):
        w, r, b = _layer_weights(params, layer, dirs, has_biases, gates, hidden_size)
        initial = [s if s is None or num_layers == 1 else op.Slice(s, [layer * dirs], [(layer + 1) * dirs], [0])
                   for s in states]  # None: ONNX's default, zeros
        y, *last = cell(x, w, r, b, initial, "bidirectional" if bidirectional else "forward")
        # Y: (T, D, B, H) -> (T, B, D*H), as PyTorch concatenates the directions
        x = op.Reshape(op.Transpose(y, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, dirs * hidden_size]))
        for acc, value in zip(finals, last):
            acc.append(value)
    out = op.Transpose(x, perm=[1, 0, 2]) if batch_first else x
    return (out, *(v[0] if len(v) == 1 else op.Concat(*v, axis=0) for v in finals))


def lstm_to_onnx(input: TFloat, h0: Optional[TFloat], c0: Optional[TFloat], params: Sequence[TFloat],
                 has_biases: bool, hidden_size: int, num_layers: int, bidirectional: bool, batch_first: bool):
    def cell(x, w, r, b, initial, direction):
        return op.LSTM(x, w, r, b, None, initial[0], initial[1], direction=direction, hidden_size=hidden_size)

    return _recurrence(cell, input, (h0, c0), params, has_biases, hidden_size, num_layers, bidirectional, batch_first,
                       LSTM_GATES)


def gru_to_onnx(input: TFloat, h0: Optional[TFloat], params: Sequence[TFloat], has_biases: bool, hidden_size: int,
                num_layers: int, bidirectional: bool, batch_first: bool):
    def cell(x, w, r, b, initial, direction):
        return op.GRU(x, w, r, b, None, initial[0], direction=direction, hidden_size=hidden_size,
                      linear_before_reset=1)

    return _recurrence(cell, input, (h0,), params, has_biases, hidden_size, num_layers, bidirectional, batch_first,
                       GRU_GATES)


def rnn_to_onnx(input: TFloat, h0: Optional[TFloat], params: Sequence[TFloat], has_biases: bool, hidden_size: int,
                num_layers: int, bidirectional: bool, batch_first: bool, nonlinearity: str):
    activation = "Relu" if nonlinearity == "relu" else "Tanh"

    def cell(x, w, r, b, initial, direction):
        dirs = 2 if direction == "bidirectional" else 1
        return op.RNN(x, w, r, b, None, initial[0], direction=direction, hidden_size=hidden_size,
                      activations=[activation] * dirs)

    return _recurrence(cell, input, (h0,), params, has_biases, hidden_size, num_layers, bidirectional, batch_first,
                       RNN_GATES)


# torch.onnx's custom_translation_table for the recurrent ops
TRANSLATIONS: dict[Callable, Callable] = {LSTM: lstm_to_onnx, GRU: gru_to_onnx, RNN: rnn_to_onnx}
ONNX_OPS = {LSTM: "LSTM", GRU: "GRU", RNN: "RNN"}


def recurrent_notes(gm: torch.fx.GraphModule, shown: int = 3) -> list[str]:
    """A report note per kind of recurrent layer in the graph: which ONNX op it becomes, and the
    first ``shown`` layers by name and line."""
    layers: dict[str, list[str]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in TRANSLATIONS:
            where = source_of(node)
            name = module_path_of(node) or node.name
            layers.setdefault(ONNX_OPS[node.target], []).append(f"'{name}'" + (f" at {where}" if where else ""))
    notes = []
    for kind, names in layers.items():
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        notes.append(f"{len(names)} recurrent layer(s) emitted as ONNX {kind}, one node per layer with the batch and "
                     f"sequence length symbolic: {', '.join(names[:shown])}{more}")
    return notes
