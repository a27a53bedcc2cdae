from __future__ import annotations

import torch

from fxtrt.passes.drop_shape_guards import drop_shape_guards, is_shape_guard
from tests import seed_models as sm
from tests.passes.conftest import assert_same


def test_guard_pinning_the_traced_shape_is_dropped(traced):
    model = sm.SizeView()
    gm, ctx = traced(model, torch.randn(1, 3, 16, 16), batch=None)
    x = next(n for n in gm.graph.nodes if n.op == "placeholder")
    with gm.graph.inserting_after(x):
        guard = gm.graph.call_function(
            torch.ops.aten._assert_tensor_metadata.default, (x,), {"size": [1, 3, 16, 16], "dtype": torch.float32}
        )
    guard.meta["stack_trace"] = 'File "model.py", line 3, in forward\n    x = x.to(torch.float32)'
    gm.recompile()
    assert is_shape_guard(guard)
    result = drop_shape_guards(gm, ctx)
    assert [c.source for c in result.changes] == ["model.py:3"]
    assert not any(is_shape_guard(n) for n in gm.graph.nodes)
    assert_same(gm, model, torch.randn(1, 3, 16, 16))


def test_graph_without_guards_is_unchanged(traced):
    gm, ctx = traced(sm.SizeView(), torch.randn(1, 3, 16, 16), batch=None)
    assert not drop_shape_guards(gm, ctx).modified
