"""Recurrent layers as one op each, so that torch.export keeps the sequence length symbolic.

torch.export traces ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` as ``aten.lstm`` & co., whose shape
function runs the recurrence step by step: the length is specialised to the example's (and a
dynamic length is a constraint violation). While :func:`recurrent_ops` is active, each such
layer of the model runs as one op of the ``fxtrt`` library instead:

    nn.LSTM(80, 32, batch_first=True)(x)      # x: (B, T, 80), no initial state
    -> fxtrt::lstm(x, None, None, [w_ih, w_hh, b_ih, b_hh], has_biases=True, hidden_size=32,
                   num_layers=1, bidirectional=False, batch_first=True)  # (B, T, 32), (1, B, 32) x 2

An absent initial state stays None in the graph (zeros, ONNX's default), so it costs no Shape ops.

Its fake implementation gives the output sizes from the input's (batch and length stay
symbols), its real one is the computation ``nn.LSTM.forward`` itself calls (``torch._VF.lstm``),
so the captured graph runs, and matches the model, at every size. ``fxtrt.backend.recurrent``
translates each op to ONNX ``LSTM`` / ``GRU`` / ``RNN`` nodes.

The ops are a library definition: defined here once, at import, and never again (a second
import of this module finds them defined). Nothing else here is global: the forward swap lives
on the user's modules only inside the ``with`` block, and is undone on every way out of it.

A layer is left to torch (and traced as before) where the op does not say the same thing:
a subclass with its own ``forward``, a module whose ``forward`` is already replaced on the
instance, train mode, ``proj_size``, a ``PackedSequence`` or an unbatched (2-d) input.
"""
from __future__ import annotations

import contextlib
import types
from typing import Any, Iterator, Optional

import torch
from torch import Tensor, nn

NAMESPACE = "fxtrt"
# torch's own forward of each layer type the op stands for
_FORWARDS = {nn.LSTM: nn.LSTM.forward, nn.GRU: nn.GRU.forward, nn.RNN: nn.RNN.forward}


def _defined(name: str) -> bool:
    try:
        getattr(getattr(torch.ops, NAMESPACE), name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _batch(input: Tensor, batch_first: bool) -> Any:
    return input.shape[0 if batch_first else 1]


def _state(input: Tensor, h0: Optional[Tensor], hidden_size: int, num_layers: int, bidirectional: bool,
           batch_first: bool) -> Tensor:
    """The initial state, zeros where none is given (as nn.RNNBase makes it)."""
    if h0 is not None:
        return h0
    shape = (num_layers * (2 if bidirectional else 1), _batch(input, batch_first), hidden_size)
    return torch.zeros(shape, dtype=input.dtype, device=input.device)


def _fake_outputs(input: Tensor, states: tuple[Optional[Tensor], ...], hidden_size: int, num_layers: int,
                  bidirectional: bool, batch_first: bool) -> tuple[Tensor, ...]:
    """The output (the input's sizes, ``D * hidden_size`` features) and the final states, whose
    sizes stay the symbols of the input's batch and length."""
    dirs = 2 if bidirectional else 1
    batch = _batch(input, batch_first)
    for h0 in states:
        if h0 is not None:
            torch._check(h0.shape[1] == batch, lambda: f"the initial state's batch {h0.shape[1]} is not the input's")
    out = input.new_empty((*input.shape[:2], dirs * hidden_size))
    return (out, *(input.new_empty((num_layers * dirs, batch, hidden_size)) for _ in states))


def _lstm(input: Tensor, h0: Optional[Tensor], c0: Optional[Tensor], params: list[Tensor], has_biases: bool,
          hidden_size: int, num_layers: int, bidirectional: bool, batch_first: bool) -> tuple[Tensor, Tensor, Tensor]:
    hx = [_state(input, s, hidden_size, num_layers, bidirectional, batch_first) for s in (h0, c0)]
    out, h, c = torch._VF.lstm(input, hx, params, has_biases, num_layers, 0.0, False, bidirectional, batch_first)
    return out, h, c


def _lstm_fake(input: Tensor, h0: Optional[Tensor], c0: Optional[Tensor], params: list[Tensor], has_biases: bool,
               hidden_size: int, num_layers: int, bidirectional: bool,
               batch_first: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _fake_outputs(input, (h0, c0), hidden_size, num_layers, bidirectional, batch_first)


def _gru(input: Tensor, h0: Optional[Tensor], params: list[Tensor], has_biases: bool, hidden_size: int,
         num_layers: int, bidirectional: bool, batch_first: bool) -> tuple[Tensor, Tensor]:
    hx = _state(input, h0, hidden_size, num_layers, bidirectional, batch_first)
    out, h = torch._VF.gru(input, hx, params, has_biases, num_layers, 0.0, False, bidirectional, batch_first)
    return out, h


def _gru_fake(input: Tensor, h0: Optional[Tensor], params: list[Tensor], has_biases: bool, hidden_size: int,
              num_layers: int, bidirectional: bool, batch_first: bool) -> tuple[Tensor, Tensor]:
    return _fake_outputs(input, (h0,), hidden_size, num_layers, bidirectional, batch_first)


def _rnn(input: Tensor, h0: Optional[Tensor], params: list[Tensor], has_biases: bool, hidden_size: int,
         num_layers: int, bidirectional: bool, batch_first: bool, nonlinearity: str) -> tuple[Tensor, Tensor]:
    run = torch._VF.rnn_tanh if nonlinearity == "tanh" else torch._VF.rnn_relu
    hx = _state(input, h0, hidden_size, num_layers, bidirectional, batch_first)
    out, h = run(input, hx, params, has_biases, num_layers, 0.0, False, bidirectional, batch_first)
    return out, h


def _rnn_fake(input: Tensor, h0: Optional[Tensor], params: list[Tensor], has_biases: bool, hidden_size: int,
              num_layers: int, bidirectional: bool, batch_first: bool, nonlinearity: str) -> tuple[Tensor, Tensor]:
    return _fake_outputs(input, (h0,), hidden_size, num_layers, bidirectional, batch_first)


def define_ops() -> None:
    """The library definition of ``fxtrt::lstm``, ``fxtrt::gru`` and ``fxtrt::rnn``: run at
    import; an op already defined in this process is left as it is."""
    for name, real, fake in (("lstm", _lstm, _lstm_fake), ("gru", _gru, _gru_fake), ("rnn", _rnn, _rnn_fake)):
        if not _defined(name):
            torch.library.custom_op(f"{NAMESPACE}::{name}", real, mutates_args=()).register_fake(fake)


define_ops()
LSTM = torch.ops.fxtrt.lstm.default
GRU = torch.ops.fxtrt.gru.default
RNN = torch.ops.fxtrt.rnn.default
OPS = frozenset({LSTM, GRU, RNN})


def runs_as_op(module: nn.Module) -> bool:
    """Whether :func:`recurrent_ops` swaps ``module``'s forward (it may still fall back per call)."""
    forward = _FORWARDS.get(type(module))
    return (forward is not None and type(module).forward is forward and "forward" not in vars(module)
            and not getattr(module, "proj_size", 0))


def _forward(module: nn.RNNBase, input: Any, hx: Any = None) -> Any:
    """``module.forward`` as one fxtrt op, or torch's own forward where the op does not apply."""
    if module.training or not isinstance(input, Tensor) or input.dim() != 3:
        return _FORWARDS[type(module)](module, input, hx)
    params = [getattr(module, name) for name in module._flat_weights_names]
    common = (bool(module.bias), module.hidden_size, module.num_layers, bool(module.bidirectional),
              bool(module.batch_first))
    if hx is not None:  # no state: the op's zeros (ONNX's default initial state, no Shape ops)
        module.check_forward_args(input, hx, None)  # torch's own errors for a wrong state
    if isinstance(module, nn.LSTM):
        h0, c0 = hx if hx is not None else (None, None)
        out, h_n, c_n = LSTM(input, h0, c0, params, *common)
        return out, (h_n, c_n)
    if isinstance(module, nn.GRU):
        return GRU(input, hx, params, *common)
    return RNN(input, hx, params, *common, "relu" if module.mode == "RNN_RELU" else "tanh")


@contextlib.contextmanager
def recurrent_ops(model: nn.Module) -> Iterator[list[str]]:
    """Inside the block, every recurrent layer of ``model`` that :func:`runs_as_op` runs as one
    fxtrt op; the block yields their qualified names. On leaving it (normally or by an
    exception) each swapped forward is removed from its module again.

    Enter it before a :class:`~fxtrt.frontend.state.ModuleState` snapshot is taken, so that the
    snapshot's restores keep the swap for as long as the block lasts.
    """
    swapped: list[tuple[nn.Module, Any]] = []
    names: list[str] = []
    try:
        for name, module in model.named_modules():
            if runs_as_op(module):
                forward = types.MethodType(_forward, module)
                object.__setattr__(module, "forward", forward)
                swapped.append((module, forward))
                names.append(name or type(module).__name__)
        yield names
    finally:
        for module, forward in swapped:
            if vars(module).get("forward") is forward:
                del module.__dict__["forward"]
