"""max_pool_1d_as_2d: 1-D max pooling written as 2-D, same values, and the length stays symbolic."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fxtrt.passes.max_pool_1d_as_2d import max_pool_1d_as_2d
from tests.passes.conftest import assert_same

aten = torch.ops.aten


class Pools(torch.nn.Module):
    def forward(self, x):
        return F.max_pool1d(x, 2, ceil_mode=True), F.max_pool1d(x, 3, stride=2, padding=1, dilation=1)


def test_every_max_pool1d_becomes_max_pool2d_with_the_same_values(traced):
    model = Pools()
    gm, ctx = traced(model, torch.randn(2, 3, 9), batch=None, dynamic={0: {2: (4, 9, 32)}})
    result = max_pool_1d_as_2d(gm, ctx)
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert aten.max_pool1d.default not in targets and targets.count(aten.max_pool2d.default) == 2
    assert len(result.changes) == 2 and "1-D max pooling" in result.changes[0].note
    for length in (9, 10, 4):
        assert_same(gm, model, torch.randn(2, 3, length))


def test_the_rewritten_graph_exports_with_the_length_symbolic(traced):
    gm, ctx = traced(Pools(), torch.randn(2, 3, 9), batch=None, dynamic={0: {2: (4, 9, 32)}})
    max_pool_1d_as_2d(gm, ctx)
    length = torch.export.Dim("s", min=4, max=32)
    ep = torch.export.export(gm, (torch.randn(2, 3, 9),), dynamic_shapes=({2: length},), strict=False,
                                prefer_deferred_runtime_asserts_over_guards=True)
    assert "s" in str(ep.range_constraints) or ep.range_constraints, "the length is a symbol"
    # the unrewritten op bakes it: this is what the pass is for
    try:
        torch.export.export(Pools(), (torch.randn(2, 3, 9),), dynamic_shapes=({2: length},), strict=False,
                                prefer_deferred_runtime_asserts_over_guards=True)
    except Exception as exc:
        assert "Constraints violated" in str(exc)


def test_static_models_are_left_alone(traced):
    gm, ctx = traced(Pools(), torch.randn(2, 3, 9), batch=None)
    assert max_pool_1d_as_2d(gm, ctx).changes == []
