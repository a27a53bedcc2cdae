"""Drop the axes a squeeze leaves alone: ``squeeze(d)`` where dim ``d`` is never 1.

PyTorch's ``x.squeeze(d)`` returns ``x`` unchanged when dim ``d`` is not 1 (a defensive
``squeeze(-1)`` on a feature dim, a squeeze of a dynamic length that is never 1). torch.export
keeps the call, torch.onnx turns it into an ONNX ``Squeeze`` on that axis, and ONNX's Squeeze
*requires* the axis to be 1: the model fails to load or to run ("Dimension of input 2 must be 1
instead of 8"). Such axes are removed from the squeeze, and a squeeze with none left is removed.

Before:  squeeze = squeeze.dims(linear, [1, 2])     # linear: [s0, 1, 8]
After:   squeeze = squeeze.dims(linear, [1])

Before:  squeeze = squeeze.dim(x, -1)                # x: [s0, 3, s1], s1 in 2..16
After:   (removed; its users read x)

An axis of a static size is judged only when every dim is symbolic in the capture: where a dim
was traced at concrete sizes (trace diffing), a static size in the trace may follow it. An axis
whose symbolic size may be 1 stays (over an input's dim, ``frontend.squeezes`` refuses it).
"""
from __future__ import annotations

import torch
import torch.fx

from fxtrt.passes.infra import PassContext, PassResult, call_text, change, graph_pass

aten = torch.ops.aten
SQUEEZES = frozenset({aten.squeeze.dim, aten.squeeze.dims})


def _never_one(size: object, static_known: bool) -> bool:
    if isinstance(size, int):
        return static_known and size != 1
    if isinstance(size, torch.SymInt):
        node = size.node
        try:
            return bool(node.shape_env.bound_sympy(node.expr).lower >= 2)
        except Exception:  # a size torch cannot bound: keep the axis
            return False
    return False


@graph_pass(requires=("generalize_batch",))
def drop_noop_squeezes(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    static_known = ctx.captured.symbolic
    changes = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in SQUEEZES:
            continue
        src = node.args[0]
        val = src.meta.get("val") if isinstance(src, torch.fx.Node) else None
        if not isinstance(val, torch.Tensor) or val.dim() == 0:
            continue
        axes = list(node.args[1]) if isinstance(node.args[1], (list, tuple)) else [node.args[1]]
        kept = [a for a in axes if not _never_one(val.shape[a % val.dim()], static_known)]
        if len(kept) == len(axes):
            continue
        before = call_text(node)
        if kept:
            node.target = aten.squeeze.dims
            node.args = (src, kept)
            changes.append(change(node, before, call_text(node), "squeeze of a dim that is never 1 does nothing"))
        else:
            changes.append(change(node, before, src.name, "squeeze of a dim that is never 1 does nothing"))
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
    if changes:
        gm.graph.lint()
        gm.recompile()
    return PassResult(gm, changes)
