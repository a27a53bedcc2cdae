"""Nearest-neighbour resizing to a size, written as the index arithmetic PyTorch does.

PyTorch's ``F.interpolate(x, size=..., mode="nearest")`` reads source row
``min(floor(dst * (float32(in) / out)), in - 1)``. ONNX ``Resize`` (nearest, asymmetric, floor)
computes ``floor(dst / (out / in))``; in float32 the two floor differently at some size pairs
(20 -> 12: output row 9 reads row 14 in ONNX Runtime, row 15 in PyTorch), so a model that resizes
to a size from another dim is wrong at sizes verification may never visit. Each resized axis
becomes a ``Gather`` with PyTorch's own indices, exact at every size.

Before:  up = upsample_nearest2d.vec(x, [w, h], None)
After:   i2 = floor(arange(w, float32) * (float32(h) / float32(w))).clamp_max(h - 1).long()
         rows = index_select(x, 2, i2);  i3 = ...;  up = index_select(rows, 3, i3)

Resizes by a scale factor (``scale_factor=2``) keep ``Resize``: there PyTorch and ONNX agree.
"""
from __future__ import annotations

import torch
import torch.fx

from fxtrt.passes.infra import NodeBuilder, PassContext, PassResult, call_text, change, graph_pass

aten = torch.ops.aten
NEAREST = {aten.upsample_nearest1d.vec: 1, aten.upsample_nearest2d.vec: 2, aten.upsample_nearest3d.vec: 3}


@graph_pass(requires=("generalize_batch",))
def exact_nearest_resize(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    changes = []
    graph = gm.graph
    for node in [n for n in graph.nodes if n.op == "call_function" and n.target in NEAREST]:
        x, size = node.args[0], node.args[1]
        scales = node.args[2] if len(node.args) > 2 else node.kwargs.get("scale_factors")
        val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        mode = getattr(val, "fake_mode", None)
        if scales is not None or size is None or mode is None or any(
                isinstance(n, torch.fx.Node) and n.meta.get("val") is None for n in size):
            continue  # a size whose value is not known here (a node a rewrite made): Resize stays
        k = NEAREST[node.target]
        before = call_text(node)
        out = x
        add = NodeBuilder(graph, node, mode)
        with graph.inserting_before(node):
            for j, out_size in enumerate(size):
                axis = val.dim() - k + j
                in_size = val.shape[axis]
                if not isinstance(in_size, torch.SymInt):
                    in_size = int(in_size)
                else:
                    in_size = add(aten.sym_size.int, x, axis)
                positions = add(aten.arange.start_step, 0, out_size, 1, dtype=torch.float32)
                scale = add(aten.div.Tensor, add(aten.scalar_tensor.default, in_size, dtype=torch.float32),
                            add(aten.scalar_tensor.default, out_size, dtype=torch.float32))
                source = add(aten.floor.default, add(aten.mul.Tensor, positions, scale))
                last = add(aten.sub.Tensor, add(aten.scalar_tensor.default, in_size, dtype=torch.float32), 1)
                index = add(aten._to_copy.default, add(aten.minimum.default, source, last), dtype=torch.int64)
                out = add(aten.index_select.default, out, axis, index)
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        changes.append(change(out, before, f"index_select over {k} axis(es) with PyTorch's nearest indices",
                              "ONNX Resize rounds nearest source indices differently from PyTorch"))
    if changes:
        graph.lint()
        gm.recompile()
    return PassResult(gm, changes)
