"""Give reshapes constant target shapes, so ONNX gets one Reshape and no shape arithmetic.

``x.view(x.size(0), -1)`` exports as Shape → Gather → Unsqueeze → Concat → Reshape: the batch
is read from the tensor at run time just to be copied back. When exactly one output dim of a
reshape is dynamic, that dim can be ``-1`` and every other dim a constant (the seed's
``x.view(-1, int(x.size(1) * x.size(2) * x.size(3)))``), and ONNX gets a constant shape.

Before:  view(relu, [batch, -1])                  (ONNX: Shape, Gather, Unsqueeze, Concat, Reshape)
After:   view(relu, [-1, 2048])                   (ONNX: Reshape with a constant shape)

Shufflenet's ``view(b, g, c // g, h, w)`` becomes ``view(-1, g, c // g, h, w)`` the same way.
Which dims are dynamic comes from the capture: a dim is dynamic where the traced shape holds a
symbol, or, for baked dims, where the traces differ (``meta["fxtrt_shapes"]``, set by
generalize_batch), so the pass never guesses.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.fx

from fxtrt.frontend.capture import dynamic_axes, static_size
from fxtrt.graph import RESHAPES
from fxtrt.passes.infra import PassContext, PassResult, call_text, change, graph_pass

aten = torch.ops.aten



def traced_shapes(node: torch.fx.Node) -> list[tuple[Any, ...]] | None:
    """The node's output shape in every trace (one for a symbolic capture); None when unknown."""
    shapes = node.meta.get("fxtrt_shapes")
    if shapes is None:
        val = node.meta.get("val")
        shapes = [tuple(val.shape)] if isinstance(val, torch.Tensor) else None
    if not shapes or any(s is None for s in shapes) or len({len(s) for s in shapes}) != 1:
        return None
    return shapes


def dynamic_positions(node: torch.fx.Node) -> list[int] | None:
    """Output dims that are symbolic or differ between the traces; None when unknown."""
    shapes = traced_shapes(node)
    return None if shapes is None else dynamic_axes(shapes)


@graph_pass(requires=("generalize_batch",), reads_meta=("fxtrt_shapes",), finding="shape-chain")
def canonicalize_flatten(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    changes = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in RESHAPES:
            continue
        sizes = node.args[1]
        if not any(isinstance(s, torch.fx.Node) for s in sizes):
            continue
        dynamic = dynamic_positions(node)
        if dynamic is None or len(dynamic) != 1:
            continue
        static_shape = traced_shapes(node)[0]
        new_sizes = [-1 if d in dynamic else static_size(static_shape[d]) for d in range(len(static_shape))]
        before = call_text(node)
        node.args = (node.args[0], new_sizes, *node.args[2:])
        changes.append(change(node, before, call_text(node), "dynamic dim as -1, others constant"))
    if changes:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return PassResult(gm, changes)
