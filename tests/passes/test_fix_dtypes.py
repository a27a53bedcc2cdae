from __future__ import annotations

import torch

from fxtrt.passes.fix_dtypes import fix_dtypes
from tests import seed_models as sm
from tests.passes.conftest import assert_same


def test_float64_buffer_becomes_float32(traced):
    model = sm.Float64Buffer()
    gm, ctx = traced(model, torch.randn(1, 12))
    result = fix_dtypes(gm, ctx)
    assert gm.scale.dtype == torch.float32
    assert result.changes[0].before == "scale: float64 [4]"
    assert result.changes[0].source.endswith("seed_models.py:" + str(sm.line_of(sm.Float64Buffer, "f64") + 3))
    (out,) = gm(torch.randn(3, 12))
    assert out.dtype == torch.float32
    assert_same(gm, model, torch.randn(3, 12))


def test_float64_dtype_arguments_become_float32(traced):
    class Upcast(torch.nn.Module):
        def forward(self, x):
            return (x.to(torch.float64) * 3).sum(-1)

    gm, ctx = traced(Upcast(), torch.randn(1, 5))
    result = fix_dtypes(gm, ctx)
    assert result.modified
    assert not any(torch.float64 in [*n.args, *n.kwargs.values()] for n in gm.graph.nodes)
    (out,) = gm(torch.randn(2, 5))
    assert out.dtype == torch.float32
    assert_same(gm, Upcast(), torch.randn(2, 5))


def test_bool_mask_in_arithmetic_is_cast_to_float(traced):
    model = sm.BoolMask()
    gm, ctx = traced(model, torch.tensor([[1, 2, 3, 2]]))
    result = fix_dtypes(gm, ctx)
    casts = [n for n in gm.graph.nodes if n.target == torch.ops.aten._to_copy.default]
    assert len(casts) == 1 and casts[0].kwargs["dtype"] == torch.float32
    assert "bool" in result.changes[0].before
    assert_same(gm, model, torch.tensor([[2, 2, 0, 1], [1, 2, 9, 9]]))


def test_integer_results_of_bool_are_not_touched(traced):
    class CountEos(torch.nn.Module):
        def forward(self, t):
            return (t == 2).sum(1)

    gm, ctx = traced(CountEos(), torch.tensor([[1, 2, 2]]))
    assert not fix_dtypes(gm, ctx).modified
