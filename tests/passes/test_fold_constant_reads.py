from __future__ import annotations

import inspect

import torch

from fxtrt.graph import SCALAR_READS as READS
from fxtrt.passes.fold_constant_reads import fold_constant_reads
from tests.passes.conftest import assert_same

aten = torch.ops.aten


class StrideFill(torch.nn.Module):
    """ultralytics' make_anchors: a tensor filled with a stride read from a buffer by .item()."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("stride", torch.tensor([8.0, 16.0]))

    def forward(self, x):
        s = self.stride[0].item()  # constant read
        return x + torch.full((x.shape[0], 1), s * 0.5)


class InputRead(torch.nn.Module):
    def forward(self, x):
        return x * x[0, 0].item()  # a value of the input: not a constant


def _reads(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in READS]


def test_item_on_a_buffer_becomes_its_value_with_the_users_line(traced):
    model = StrideFill().eval()
    gm, ctx = traced(model, torch.randn(1, 4))
    assert _reads(gm), "the capture keeps the read as a symbol"
    result = fold_constant_reads(gm, ctx)
    assert not _reads(gm)
    (change,) = result.changes
    assert change.after == "8.0"
    line = inspect.getsourcelines(StrideFill.forward)[1] + 1
    assert change.source.endswith(f"test_fold_constant_reads.py:{line}")
    full = next(n for n in gm.graph.nodes if n.target == aten.full.default)
    assert 4.0 in full.args, "the scalar math on the folded value is folded too"
    assert_same(gm, model, torch.randn(5, 4))


def test_reads_from_the_inputs_are_left_alone(traced):
    gm, ctx = traced(InputRead().eval(), torch.randn(1, 4), batch=None)
    result = fold_constant_reads(gm, ctx)
    assert not result.modified and _reads(gm)
