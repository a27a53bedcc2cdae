"""Write out the dims of ``amax`` / ``amin`` over the whole tensor.

``x.amax()`` with no ``dim`` reduces every dim; torch.onnx's translation of ``aten.amax`` requires
``dim`` and refuses the call (an EmitError). Naming every dim computes the same.

Before:  amax = amax(x)            # x: [s0, 4, 8]
After:   amax = amax(x, [0, 1, 2])
"""
from __future__ import annotations

import torch
import torch.fx

from fxtrt.passes.infra import PassContext, PassResult, call_text, change, graph_pass

aten = torch.ops.aten
REDUCTIONS = frozenset({aten.amax.default, aten.amin.default})


@graph_pass(requires=("generalize_batch",))
def explicit_reduce_dims(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    changes = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in REDUCTIONS:
            continue
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", [])
        val = node.args[0].meta.get("val") if isinstance(node.args[0], torch.fx.Node) else None
        if dim or not isinstance(val, torch.Tensor) or val.dim() == 0:
            continue
        before = call_text(node)
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        node.args = (node.args[0], list(range(val.dim())), keepdim)
        node.kwargs = {}
        changes.append(change(node, before, call_text(node), "torch.onnx needs the dims of amax/amin"))
    if changes:
        gm.recompile()
    return PassResult(gm, changes)
