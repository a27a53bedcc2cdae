"""Recurrent layers with a dynamic sequence (issue 17, class 1): nn.LSTM / nn.GRU / nn.RNN compile
with batch and length both dynamic, as ONNX LSTM / GRU / RNN nodes, and match eager at every size.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
import torch.utils._pytree as pytree
from torch import nn

import fxtrt
from fxtrt.frontend.recurrent import GRU, LSTM, OPS, RNN, define_ops, recurrent_ops, runs_as_op

SEQ = (3, 16, 41)  # the length's range; batch (1, 4, 8); every model compiled from batch 1
BATCHES = (1, 3, 8)
LENGTHS = (3, 22, 41)  # min, middle, max
ONNX_OP = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN", "rnn_relu": "RNN"}


class Recurrent(nn.Module):
    """One recurrent layer and its initial state: none, given as inputs, or built from the
    input's batch size (``torch.zeros(L * D, x.size(b), H)``)."""

    def __init__(self, kind: str, layers: int, bidirectional: bool, batch_first: bool, h0: str, bias: bool = True):
        super().__init__()
        cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN, "rnn_relu": nn.RNN}[kind]
        extra = {"nonlinearity": kind[4:]} if kind.startswith("rnn") else {}
        self.rnn = cls(6, 5, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias,
                       **extra)
        self.kind, self.h0 = kind, h0
        self.states = layers * (2 if bidirectional else 1)
        self.batch_axis = 0 if batch_first else 1

    def forward(self, x, *state):
        if self.h0 == "from_batch":
            h = torch.zeros(self.states, x.size(self.batch_axis), 5)
            state = (h, torch.zeros_like(h)) if self.kind == "lstm" else (h,)
        if not state:
            return self.rnn(x)
        return self.rnn(x, tuple(state) if self.kind == "lstm" else state[0])


# (kind, layers, bidirectional, batch_first, h0): every kind, one and two layers, both directions,
# both layouts, and each way of giving the initial state
VARIANTS = [
    ("lstm", 1, False, True, "none"),
    ("lstm", 2, True, False, "from_batch"),
    ("lstm", 1, True, True, "input"),
    ("gru", 2, False, True, "from_batch"),
    ("gru", 1, True, False, "none"),
    ("gru", 2, True, False, "input"),
    ("rnn_tanh", 2, True, True, "none"),
    ("rnn_tanh", 1, False, False, "input"),
    ("rnn_relu", 1, False, False, "from_batch"),
    ("rnn_relu", 2, True, True, "input"),
]


def _inputs(model: Recurrent, batch: int, length: int) -> tuple[torch.Tensor, ...]:
    x = torch.randn(batch, length, 6) if model.rnn.batch_first else torch.randn(length, batch, 6)
    if model.h0 != "input":
        return (x,)
    h = torch.randn(model.states, batch, 5)
    return (x, h, torch.randn_like(h)) if model.kind == "lstm" else (x, h)


def _compile(model: Recurrent, **kw):
    seq_axis = 1 if model.rnn.batch_first else 0
    n = len(_inputs(model, 1, 1))
    return fxtrt.compile(model, _inputs(model, 1, SEQ[1]), batch=(1, 4, 8),
                         batch_dims=(model.batch_axis,) + (1,) * (n - 1), dynamic={0: {seq_axis: ("seq", *SEQ)}}, **kw)


def _assert_matches(model: nn.Module, compiled, inputs) -> None:
    with torch.no_grad():
        refs = pytree.tree_leaves(model(*inputs))
    outs = pytree.tree_leaves(compiled(*inputs))
    assert len(outs) == len(refs)
    for o, r in zip(outs, refs):
        assert o.shape == r.shape
        np.testing.assert_allclose(o.numpy(), r.numpy(), atol=1e-4, rtol=1e-3)


def _op_counts(compiled) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(compiled.onnx_path)).graph.node)


@pytest.mark.parametrize("kind,layers,bidirectional,batch_first,h0", VARIANTS,
                         ids=["-".join(map(str, v)) for v in VARIANTS])
def test_recurrent_layer_with_dynamic_batch_and_length(kind, layers, bidirectional, batch_first, h0):
    model = Recurrent(kind, layers, bidirectional, batch_first, h0).eval()
    compiled = _compile(model)

    ops = _op_counts(compiled)
    assert ops[ONNX_OP[kind]] == layers, f"one ONNX {ONNX_OP[kind]} node per layer: {ops}"
    assert not {"Loop", "Scan", "MatMul", "Gemm", "Tanh", "Sigmoid", "Relu"} & set(ops), f"unrolled: {ops}"
    graph = onnx.load(str(compiled.onnx_path)).graph
    x_dims = [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim[:2]]
    assert x_dims == (["batch", "seq"] if batch_first else ["seq", "batch"])
    verified = {(r.sizes["batch"], r.sizes["seq"]) for r in compiled.report.verification}
    assert {(1, SEQ[0]), (8, SEQ[2])} <= verified

    for batch in BATCHES:
        for length in LENGTHS:
            _assert_matches(model, compiled, _inputs(model, batch, length))
    assert "forward" not in vars(model.rnn), "the swap of forward never stays on the user's model"


def test_lstm_without_biases():
    model = Recurrent("lstm", 1, False, False, "none", bias=False).eval()
    compiled = _compile(model)
    assert _op_counts(compiled)["LSTM"] == 1
    _assert_matches(model, compiled, _inputs(model, 3, 41))


def test_the_issues_lstm_compiles_with_batch_and_length_dynamic():
    model = nn.LSTM(80, 32, batch_first=True).eval()
    compiled = fxtrt.compile(model, torch.randn(1, 50, 80), batch=(1, 4, 8), dynamic={0: {1: (20, 50, 200)}})
    assert _op_counts(compiled)["LSTM"] == 1
    x = torch.randn(3, 77, 80)
    _assert_matches(model, compiled, (x,))
    assert isinstance(compiled(x)[1], tuple), "compiled(x) returns (output, (h_n, c_n)) as nn.LSTM does"


def test_a_layer_without_initial_state_has_no_shape_ops_and_converts_to_opset_14():
    """No state given: the op passes none, ONNX's default (zeros), so no Shape-15 blocks opset 14."""
    model = Recurrent("gru", 2, True, True, "none").eval()
    compiled = _compile(model, opset=14)
    ops = _op_counts(compiled)
    assert ops["GRU"] == 2 and not {"Shape", "Expand", "ConstantOfShape"} & set(ops), ops
    assert onnx.load(str(compiled.onnx_path)).opset_import[0].version == 14
    _assert_matches(model, compiled, _inputs(model, 3, 41))


class GruSpeechEncoder(nn.Module):
    """The seed's speech encoder with a GRU: x (B, T, 80), mask (B, 1, T), T in 20..2000."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(80, 32)
        self.gru = nn.GRU(32, 32, num_layers=2, batch_first=True, bidirectional=True)
        self.out = nn.Linear(64, 16)

    def forward(self, x, mask):
        m = mask.transpose(1, 2)
        y, _ = self.gru(torch.relu(self.inp(x)) * m)
        return self.out(y) * m


def test_gru_speech_encoder_with_batch_and_time_dynamic(tmp_path):
    """The seed's case end to end: GRU nodes, and a TensorRT plan that keeps the batch dynamic and
    discretises T (one engine per T value), as the seed recommends."""
    model = GruSpeechEncoder().eval()
    x, mask = torch.randn(1, 100, 80), torch.ones(1, 1, 100)
    mask[..., 90:] = 0
    t = ("T", 20, 100, 2000)
    compiled = fxtrt.compile(model, (x, mask), batch=(1, 2, 4), dynamic={0: {1: t}, 1: {2: t}},
                             target="tensorrt", out_dir=tmp_path / "out")
    ops = _op_counts(compiled)
    assert ops["GRU"] == 2 and "Loop" not in ops and ops["MatMul"] <= 2, ops  # the two Linears
    plan = compiled.report.stages["engines"]["plan"]
    assert plan["kind"] == "split" and plan["keep_dynamic"] == "batch", plan
    assert plan["split"]["T"][0] == 20 and plan["split"]["T"][-1] == 2000 and 100 in plan["split"]["T"]
    for engine in plan["engines"]:
        (x_in, _) = engine["inputs"]
        assert x_in["min"][0] == 1 and x_in["max"][0] == 4 and x_in["min"][1] == x_in["max"][1] == engine["fixed"]["T"]
    seen = {(r.sizes["batch"], r.sizes["T"]) for r in compiled.report.verification}
    assert {(1, 20), (4, 2000)} <= seen
    _assert_matches(model, compiled, (x.repeat(3, 7, 1)[:, :651], mask.repeat(3, 1, 7)[..., :651]))


def test_capture_keeps_the_length_symbolic_in_one_op_per_layer():
    model = Recurrent("gru", 2, True, True, "none").eval()
    x = torch.randn(2, 9, 6)
    seq = torch.export.Dim("seq", min=3, max=41)
    with recurrent_ops(model) as swapped:
        ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("b", max=8), 1: seq},),
                                 strict=False)
    assert swapped == ["rnn"]
    calls = [n for n in ep.graph.nodes if n.op == "call_function" and n.target in OPS]
    assert [n.target for n in calls] == [GRU]
    out = calls[0].meta["val"][0]
    assert not isinstance(out.shape[1], int), "the length stays a symbol"
    other = torch.randn(3, 30, 6)
    with torch.no_grad():
        for got, ref in zip(ep.module()(other), model(other)):
            torch.testing.assert_close(got, ref)


def test_the_swap_is_undone_when_the_block_raises():
    model = nn.Sequential(nn.LSTM(4, 4), nn.GRU(4, 4))
    with pytest.raises(RuntimeError, match="inside"):
        with recurrent_ops(model):
            assert all("forward" in vars(m) for m in model)
            raise RuntimeError("inside")
    assert not any("forward" in vars(m) for m in model)


def test_a_failed_compile_leaves_the_model_as_it_was():
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(6, 5, batch_first=True)

        def forward(self, x):
            y, _ = self.rnn(x)
            return y[:, : int((x > 0).sum().item())]

    model = DataDependent().eval()
    with pytest.raises(fxtrt.GeneralizationError, match="tensor values"):  # raised inside capture
        fxtrt.compile(model, torch.randn(1, 16, 6), batch=(1, 4, 8), dynamic={0: {1: SEQ}})
    assert "forward" not in vars(model.rnn)
    assert model.rnn.forward.__func__ is nn.RNN.forward


def test_layers_the_op_does_not_cover_are_left_to_torch():
    class OwnForward(nn.GRU):
        def forward(self, x, hx=None):
            return super().forward(x * 2, hx)

    assert runs_as_op(nn.LSTM(4, 4)) and runs_as_op(nn.RNN(4, 4, nonlinearity="relu"))
    assert not runs_as_op(OwnForward(4, 4)), "a subclass's own forward is the user's computation"
    assert not runs_as_op(nn.LSTM(4, 8, proj_size=4)), "ONNX LSTM has no projection"
    model = nn.Sequential(OwnForward(4, 4), nn.LSTM(4, 4))
    with recurrent_ops(model) as swapped:
        assert swapped == ["1"]
        x = torch.randn(3, 2, 4)
        lstm = model[1].eval()
        with torch.no_grad():
            torch.testing.assert_close(lstm(x), nn.LSTM.forward(lstm, x), msg="the op computes torch's forward")
        assert lstm(x[:, 0])[0].dim() == 2, "an unbatched input runs torch's own forward"


def test_the_ops_are_defined_once():
    define_ops()  # as a second import would: the ops already defined are kept, nothing raises
    assert torch.ops.fxtrt.lstm.default is LSTM and torch.ops.fxtrt.rnn.default is RNN
