from __future__ import annotations

import torch

from fxtrt.passes.canonicalize_flatten import canonicalize_flatten
from tests import seed_models as sm
from tests.passes.conftest import assert_same, run_with_requirements


def run(gm, ctx):
    return run_with_requirements(gm, ctx, "canonicalize_flatten")


def view_args(gm):
    return [n.args[1] for n in gm.graph.nodes if n.op == "call_function" and "view" in str(n.target)]


def test_view_batch_minus_one_becomes_minus_one_and_constant(traced):
    model = sm.SizeView()
    gm, ctx = traced(model, torch.randn(1, 3, 16, 16))
    result = run(gm, ctx)
    assert view_args(gm) == [[-1, 392]]
    assert result.changes[0].after.endswith("[-1, 392])")
    assert not any(n.target == torch.ops.aten.sym_size.int for n in gm.graph.nodes), "no size read is left"
    for b in (1, 5):
        assert_same(gm, model, torch.randn(b, 3, 16, 16))


def test_channel_shuffle(traced):
    class Shuffle(torch.nn.Module):
        def forward(self, x):
            b, c, h, w = x.size()
            x = x.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous()
            return x.view(b, -1, h, w)

    gm, ctx = traced(Shuffle(), torch.randn(1, 8, 4, 4))
    run(gm, ctx)
    assert view_args(gm) == [[-1, 2, 4, 4, 4], [-1, 8, 4, 4]]
    assert_same(gm, Shuffle(), torch.randn(3, 8, 4, 4))


def test_two_dynamic_dims_are_left_symbolic(traced):
    model = sm.SpeechEncoder()
    gm, ctx = traced(model, (torch.randn(1, 30, 80), torch.ones(1, 1, 30)), batch=(1, 2, 4),
                     dynamic={0: {1: (20, 50, 100)}, 1: {2: (20, 50, 100)}})
    result = run(gm, ctx)
    assert not result.modified, "one -1 cannot stand for two dynamic dims"
    assert_same(gm, model, torch.randn(2, 33, 80), torch.ones(2, 1, 33))


def test_static_reshape_untouched(traced):
    gm, ctx = traced(sm.SizeView(), torch.randn(2, 3, 16, 16), batch=None)
    assert not canonicalize_flatten(gm, ctx).modified
