"""Higher-order ops torch.export puts in a graph: torch.cond becomes ONNX If, scan / map Scan,
while_loop Loop; no_grad and disabled-autocast regions are inlined; any other higher-order op is
an EmitError naming it and the model's line. Each model is compiled from batch 1 with the batch
dynamic and matches eager at batch 1, 3 and 8, on inputs that take every branch."""
from __future__ import annotations

import inspect

import onnx
import pytest
import torch
from torch._higher_order_ops.map import map as hop_map
from torch._higher_order_ops.scan import scan
from torch._higher_order_ops.while_loop import while_loop

import fxtrt
from fxtrt.errors import EmitError

SIZES = (1, 3, 8)


class CondOnShape(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        return torch.cond(x.shape[0] > 4, lambda x: self.lin(x).relu(), lambda x: self.lin(x) * 2 - 1, (x,))


class CondOnValue(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda x: self.lin(x).relu(), lambda x: self.lin(x).sigmoid() - 1, (x,))


class NoGrad(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        with torch.no_grad():
            y = self.lin(x + 1)
        return y.relu()


class AutocastDisabled(torch.nn.Module):
    """As timm's efficientvit writes its attention: a region autocast must leave in float32."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        with torch.autocast("cpu", enabled=False):
            y = self.lin(x)
        return y.relu()


class AutocastEnabled(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(64, 64)

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.float16):
            y = self.lin(x)
        return y.float().relu()


class Scan(torch.nn.Module):
    """A recurrence over the time axis (x: B x T x 4), its state and every step's output."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        def step(h, xt):
            h = torch.tanh(self.lin(xt) + h)
            return h, h * 2

        h, ys = scan(step, x.new_zeros(x.shape[0], 4), x.transpose(0, 1))
        return h, ys.transpose(0, 1)


class Map(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        return hop_map(lambda xi: self.lin(xi).relu(), x)


class WhileLoop(torch.nn.Module):
    def forward(self, x):
        _, y = while_loop(lambda i, y: i < 3, lambda i, y: (i + 1, y * 2 + 1), (torch.zeros((), dtype=torch.int64), x))
        return y


def _compile(model, example, tmp_path):
    return fxtrt.compile(model.eval(), example, batch=(1, 4, 8), out_dir=tmp_path / "out")


def _ops(compiled) -> list[str]:
    """Op types of the ONNX model, inside its If branches and loop bodies too."""
    def walk(graph):
        for node in graph.node:
            yield node.op_type
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    yield from walk(a.g)
    return list(walk(onnx.load(str(compiled.onnx_path)).graph))


def _assert_matches(compiled, model, x):
    with torch.no_grad():
        want = model(x)
    got = compiled(x)
    want, got = (want, got) if isinstance(want, tuple) else ((want,), (got,))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-3)


def test_cond_on_a_size_is_an_if_that_follows_the_batch(tmp_path):
    model = CondOnShape()
    compiled = _compile(model, torch.randn(1, 4), tmp_path)
    assert compiled.report.verified
    assert "If" in _ops(compiled), "the branch is chosen at run time, not baked at the traced batch"
    assert onnx.load(str(compiled.onnx_path)).graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for b in SIZES:  # 1 and 3 take the false branch, 8 the true one
        _assert_matches(compiled, model, torch.randn(b, 4))


def test_cond_on_a_tensor_value_takes_both_branches(tmp_path):
    model = CondOnValue()
    compiled = _compile(model, torch.randn(1, 4), tmp_path)
    assert compiled.report.verified
    assert "If" in _ops(compiled)
    for b in SIZES:
        for sign in (1, -1):
            _assert_matches(compiled, model, sign * torch.rand(b, 4))


@pytest.mark.parametrize("model", [NoGrad(), AutocastDisabled()], ids=["no_grad", "autocast_disabled"])
def test_a_context_manager_region_is_inlined(model, tmp_path):
    compiled = _compile(model, torch.randn(1, 4), tmp_path)
    assert compiled.report.verified
    ops = _ops(compiled)
    assert "If" not in ops and "Loop" not in ops and not onnx.load(str(compiled.onnx_path)).functions
    for b in SIZES:
        _assert_matches(compiled, model, torch.randn(b, 4))


def test_an_enabled_autocast_region_computes_in_half_as_in_eager(tmp_path):
    """Not inlined: that would drop autocast's casts and compute the Linear in float32. torch.onnx
    writes them out: the ONNX Gemm takes float16, as eager's Linear does. (ONNX Runtime's CPU
    provider then runs it in float32 between casts of its own, so only float16-level agreement is
    checked here.)"""
    model = AutocastEnabled()
    compiled = _compile(model, torch.randn(1, 64), tmp_path)
    assert compiled.report.verified
    graph = onnx.load(str(compiled.onnx_path)).graph
    to_half = {n.output[0] for n in graph.node if n.op_type == "Cast"
               and onnx.helper.get_attribute_value(n.attribute[0]) == onnx.TensorProto.FLOAT16}
    halves = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    assert gemm.input[0] in to_half and set(gemm.input[1:]) <= halves | to_half
    for b in SIZES:
        x = torch.randn(b, 64)
        with torch.no_grad():
            want = model(x)
        torch.testing.assert_close(compiled(x), want, atol=2e-3, rtol=1e-2)


@pytest.mark.parametrize("model, op", [(Scan(), "Scan"), (Map(), "Scan"), (WhileLoop(), "Loop")],
                         ids=["scan", "map", "while_loop"])
def test_loops_become_onnx_loops(model, op, tmp_path):
    compiled = _compile(model, torch.randn(1, 5, 4), tmp_path)
    assert compiled.report.verified
    assert op in _ops(compiled)
    for b in SIZES:
        _assert_matches(compiled, model, torch.randn(b, 5, 4))


class Printing(torch.nn.Module):
    def forward(self, x):
        torch._higher_order_ops.print("x: {x}", x=x)
        return x * 2


def test_a_higher_order_op_onnx_cannot_hold_is_named_at_its_line(tmp_path):
    with pytest.raises(EmitError) as info:
        _compile(Printing(), torch.randn(1, 4), tmp_path)
    err = info.value
    assert err.message.startswith("torch.ops.higher_order.print cannot be emitted to ONNX")
    line = inspect.getsourcelines(Printing.forward)[1] + 1
    assert err.source == f"{__file__}:{line}"
    assert "please report" not in str(err)
    assert not (tmp_path / "out").exists(), "a failed compile leaves no files behind"


@pytest.mark.slow
def test_timm_efficientvit_b0_with_its_autocast_disabled_attention(tmp_path):
    """timm's LiteMLA computes attention under ``torch.autocast(enabled=False)``."""
    timm = pytest.importorskip("timm")
    model = timm.create_model("efficientvit_b0", pretrained=False).eval()
    # at 128x128 (a conv net with global pooling: any size that is a multiple of 32) to keep make test short
    compiled = fxtrt.compile(model, torch.randn(1, 3, 128, 128), batch=(1, 2, 4), out_dir=tmp_path / "out")
    assert compiled.report.verified
    for b in (1, 3):
        _assert_matches(compiled, model, torch.randn(b, 3, 128, 128))
