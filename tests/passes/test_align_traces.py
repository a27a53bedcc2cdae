"""align_noop_slices: an ``alias`` standing for a full slice matches the slice of another trace."""
from __future__ import annotations

import torch

from fxtrt.passes.align_traces import align_noop_slices

aten = torch.ops.aten


class Crop(torch.nn.Module):
    def forward(self, x):
        return x + x[:, ::2].repeat_interleave(2, 1)[:, : x.size(1)]


def _ops(n):
    ep = torch.export.export(Crop(), (torch.randn(2, n, 8),), strict=False)
    gm = ep.module()
    return gm, [node for node in gm.graph.nodes if node.op == "call_function"]


def test_the_alias_of_an_even_length_becomes_the_full_slice_the_odd_length_has():
    even, even_ops = _ops(8)
    odd, odd_ops = _ops(9)
    assert aten.alias.default in {n.target for n in even_ops}, "torch drops the no-op crop at an even length"
    assert align_noop_slices([even_ops, odd_ops]) == 1
    even.recompile()
    slices = [n for n in even.graph.nodes if n.target == aten.slice.Tensor]
    assert slices[-1].args[1:] == (1, 0, 8)
    x = torch.randn(2, 8, 8)
    torch.testing.assert_close(even(x), Crop()(x))


def test_columns_that_already_agree_are_untouched():
    _, a = _ops(9)
    _, b = _ops(11)
    assert align_noop_slices([a, b]) == 0
