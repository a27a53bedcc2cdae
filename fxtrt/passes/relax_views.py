"""Make views of re-laid-out tensors explicit copies, so they stay valid for symbolic sizes.

A trace at concrete sizes records ``view`` wherever the concrete strides allowed it, e.g. on a
transpose whose input happened to be laid out so the view is free. With a symbolic batch torch
recomputes the strides symbolically, may no longer prove the view valid, and the ONNX exporter
fails ("Cannot view a tensor with shape [s43, 16, 4, 8] and strides (512, 8, 128, 1)" in T5's
attention; today's torch.onnx.export crashes on T5 the same way). A contiguous clone in front
makes the view valid for every size. In ONNX a clone is an Identity, which cleanup removes, so the
emitted model does not change.

Before:  transpose_3 = transpose(sdpa, 1, 2);  view_4 = view(transpose_3, [-1, 16, 32])
After:   transpose_3 = transpose(sdpa, 1, 2);  clone = clone(transpose_3, memory_format=contiguous)
         view_4 = view(clone, [-1, 16, 32])

A symbolic capture needs it too: torch.export records a view where the strides it traced with
allowed one, and torch.onnx's decompositions re-derive the strides and may refuse it (the
benchmark's T5 encoder, batch symbolic from capture).

``x.contiguous()`` is the same trap (it copies only when the traced strides say so) and becomes
an unconditional ``clone(x, memory_format=contiguous)``.
"""
from __future__ import annotations

import torch
import torch.fx

from fxtrt.graph import RESHAPES
from fxtrt.passes.infra import PassContext, PassResult, call_text, change, graph_pass

aten = torch.ops.aten

# Ops whose output strides are not those of a contiguous tensor of its shape.
RELAYOUTS = frozenset({
    aten.transpose.int, aten.permute.default, aten.t.default, aten.expand.default, aten.slice.Tensor,
    aten.select.int, aten.unfold.default, aten.diagonal.default, aten.as_strided.default, aten.narrow.default,
})


@graph_pass(requires=("generalize_batch",))
def relax_views(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    if not ctx.settings.dims:
        return PassResult(gm, [])
    changes = []
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target == aten.contiguous.default:
            # contiguous() copies only if the strides *known at trace time* say so; make it always copy.
            before = call_text(node)
            node.target = aten.clone.default
            node.kwargs = {"memory_format": torch.contiguous_format}
            changes.append(change(node, before, call_text(node), "contiguous() that must copy for every size"))
            continue
        if node.op != "call_function" or node.target not in RESHAPES:
            continue
        src = node.args[0]
        if not (isinstance(src, torch.fx.Node) and src.op == "call_function" and src.target in RELAYOUTS):
            continue
        before = call_text(node)
        with gm.graph.inserting_before(node):
            copy = gm.graph.call_function(aten.clone.default, (src,), {"memory_format": torch.contiguous_format})
        copy.meta = {k: node.meta[k] for k in ("stack_trace", "nn_module_stack") if k in node.meta}
        if "val" in src.meta:
            copy.meta["val"] = src.meta["val"]
        node.replace_input_with(src, copy)
        changes.append(change(node, before, call_text(node), "view of a re-laid-out tensor made a copy first"))
    if changes:
        gm.graph.lint()
        gm.recompile()
    return PassResult(gm, changes)
