"""explicit_reduce_dims: ``x.amax()`` / ``x.amin()`` over every dim name the dims, so torch.onnx emits them."""
from __future__ import annotations

import torch

import fxtrt
from fxtrt.passes.explicit_reduce_dims import explicit_reduce_dims
from tests.passes.conftest import assert_same


class Extremes(torch.nn.Module):
    def forward(self, x):
        return x / x.amax() - x.amin(), x.amax(-1)


def test_amax_and_amin_over_everything_name_every_dim(traced):
    model = Extremes().eval()
    gm, ctx = traced(model, torch.randn(1, 4, 8), batch=(1, 4, 8))
    result = explicit_reduce_dims(gm, ctx)
    assert len(result.changes) == 2 and all("[0, 1, 2]" in c.after for c in result.changes)
    assert_same(gm, model, torch.randn(3, 4, 8))


def test_compile_serves_amax_without_dim():
    model = Extremes().eval()
    c = fxtrt.compile(model, torch.randn(1, 4, 8), batch=(1, 4, 8))
    x = torch.randn(5, 4, 8)
    for got, want in zip(c(x), model(x)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
