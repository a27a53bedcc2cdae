"""drop_noop_squeezes: a squeeze of a dim that is never 1 is what PyTorch does (nothing), not an
ONNX Squeeze that fails."""
from __future__ import annotations

import torch

import fxtrt
from fxtrt.passes.drop_noop_squeezes import drop_noop_squeezes
from tests.passes.conftest import assert_same

aten = torch.ops.aten


class Squeezes(torch.nn.Module):
    def forward(self, x):
        y = x.sum(1, keepdim=True)          # [B, 1, T]
        return y.squeeze(1) * 2, x.squeeze(-1) + 1, y.squeeze((1, 2))


def _squeezes(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in (aten.squeeze.dim, aten.squeeze.dims)]


def test_only_the_axes_that_are_1_stay(traced):
    model = Squeezes().eval()
    gm, ctx = traced(model, torch.randn(1, 3, 8), batch=(1, 4, 8), dynamic={0: {2: (2, 8, 16)}})
    assert len(_squeezes(gm)) == 3
    result = drop_noop_squeezes(gm, ctx)
    kept = _squeezes(gm)
    assert [list(n.args[1]) if isinstance(n.args[1], (list, tuple)) else [n.args[1]] for n in kept] == [[1], [1]]
    assert len(result.changes) == 2 and all("never 1" in c.note for c in result.changes)
    for shape in [(3, 3, 5), (1, 3, 16)]:
        assert_same(gm, model, torch.randn(*shape))


def test_a_graph_traced_at_concrete_sizes_keeps_its_static_squeezes(traced):
    class Baked(torch.nn.Module):
        def forward(self, x):
            return x.view(int(x.size(0)), -1).squeeze(-1)

    gm, ctx = traced(Baked().eval(), torch.randn(1, 3, 1), batch=(1, 4, 8))
    assert not ctx.captured.symbolic
    assert not drop_noop_squeezes(gm, ctx).changes


def test_compile_serves_a_model_with_a_noop_squeeze():
    model = Squeezes().eval()
    c = fxtrt.compile(model, torch.randn(1, 3, 8), batch=(1, 4, 8), dynamic={0: {2: (2, 8, 16)}})
    x = torch.randn(3, 3, 11)
    for got, want in zip(c(x), model(x)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
