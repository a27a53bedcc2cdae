"""Write 1-D max pooling as 2-D, which torch.export keeps symbolic.

``F.max_pool1d`` over a dynamic length makes torch.export specialise that length (torch
2.14: "Not all values of s ... satisfy the generated guard 9 <= s <= 9"); ``max_pool2d`` over
the same tensor with a height of 1 keeps it symbolic and computes the same values, and both
are one ``MaxPool`` in ONNX. The capture then generalises the length by trace diffing, and
this rewrite is what lets the generalised graph be exported with it symbolic.

Before:  pool = max_pool1d(conv, [2], [], [0], [1], True)
After:   unsqueeze = unsqueeze(conv, -2)
         pool_2d = max_pool2d(unsqueeze, [1, 2], [1, 2], [0, 0], [1, 1], True)
         pool = squeeze.dim(pool_2d, -2)
"""
from __future__ import annotations

import torch
import torch.fx

from fxtrt.passes.infra import PassContext, PassResult, call_text, change, graph_pass

aten = torch.ops.aten


def _one(value: object, default: int) -> int:
    """A 1-D pooling argument (int, [int] or []) as an int."""
    if isinstance(value, (list, tuple)):
        return int(value[0]) if value else default
    return default if value is None else int(value)  # type: ignore[arg-type]


@graph_pass(requires=("generalize_batch",))
def max_pool_1d_as_2d(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    if not ctx.settings.dims:
        return PassResult(gm, [])
    changes = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != aten.max_pool1d.default:
            continue
        args = list(node.args) + [None] * (6 - len(node.args))
        src = args[0]
        kernel = _one(args[1], 1)
        stride = _one(args[2], kernel)
        padding, dilation = _one(args[3], 0), _one(args[4], 1)
        ceil = bool(args[5]) if args[5] is not None else False
        before = call_text(node)
        graph = gm.graph
        with graph.inserting_before(node):
            tall = graph.call_function(aten.unsqueeze.default, (src, -2))
            pool = graph.call_function(aten.max_pool2d.default,
                                       (tall, [1, kernel], [1, stride], [0, padding], [1, dilation], ceil))
            flat = graph.call_function(aten.squeeze.dim, (pool, -2))
        for new in (tall, pool, flat):
            new.meta = {k: node.meta[k] for k in ("stack_trace", "nn_module_stack") if k in node.meta}
        if "val" in node.meta:
            flat.meta["val"] = node.meta["val"]
        node.replace_all_uses_with(flat)
        graph.erase_node(node)
        changes.append(change(flat, before, call_text(pool), "1-D max pooling written as 2-D (stays symbolic)"))
    if changes:
        gm.graph.lint()
        gm.recompile()
    return PassResult(gm, changes)
