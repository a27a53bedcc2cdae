"""Attention as torch.onnx translates it, 4-D: leading dims folded into one, or added.

``F.scaled_dot_product_attention`` takes query, key and value of any rank ``(..., L, E)``: timm's
hiera, nest and twins attend over ``(B, windows, heads, L, E)``. torch.onnx's translator accepts
only 4-D ("only 4D query, key, and value are supported"). Attention is independent along the
leading dims, so folding them into one batch dim is exact when query, key and value share them.

Before:  sdpa = scaled_dot_product_attention(q, k, v)            # q, k, v: [s0, 4, 2, 6, 8]
After:   q4 = flatten(q, 0, 1); k4 = flatten(k, 0, 1); v4 = flatten(v, 0, 1)   # [4*s0, 2, 6, 8]
         sdpa4 = scaled_dot_product_attention(q4, k4, v4)
         sdpa = unflatten(sdpa4, 0, [sym_size(q, 0), 4])          # [s0, 4, 2, 6, 8]

Attention over 3-D (or 2-D) tensors (timm's SAM ViT attends over ``(B*heads, N, E)`` with a
3-D relative-position mask) gets leading dims of 1, and drops them after; a mask broadcasts
from the right, so it is left as it is:

Before:  sdpa = scaled_dot_product_attention(q, k, v, mask)     # q, k, v: [4*s0, 64, 4]; mask [4*s0, 64, 64]
After:   sdpa4 = scaled_dot_product_attention(unsqueeze(q, 0), unsqueeze(k, 0), unsqueeze(v, 0), mask)
         sdpa = squeeze(sdpa4, [0])                               # [4*s0, 64, 4]

Left alone when folding: a mask of more than 2-D (it may broadcast over the folded dims differently), and
leading dims that differ between query, key and value (broadcasting).
"""
from __future__ import annotations

import torch
import torch.fx

from fxtrt.passes.infra import (PassContext, PassResult, call_text, change, fake_value, graph_pass, same_size,
                                tensor_value)

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default


@graph_pass(requires=("generalize_batch",))
def fold_attention_dims(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    changes = []
    graph = gm.graph
    for node in list(graph.find_nodes(op="call_function", target=SDPA)):
        q, k, v = node.args[:3]
        vals = [tensor_value(q), tensor_value(k), tensor_value(v)]
        if any(t is None for t in vals) or len({t.dim() for t in vals}) != 1 or vals[0].dim() in (1, 4):
            continue
        before = call_text(node)
        if vals[0].dim() < 4:
            lead = 4 - vals[0].dim()
            changes.append(change(_lift(graph, node, lead), before, f"the same with {lead} leading dim(s) of 1",
                                  "torch.onnx translates only 4-D attention"))
            continue
        mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
        if mask is not None and (tensor_value(mask) is None or tensor_value(mask).dim() > 2):
            continue
        lead = vals[0].dim() - 3
        if not all(same_size(a, b) for t in vals[1:] for a, b in zip(vals[0].shape[:lead], t.shape[:lead])):
            continue
        changes.append(change(_fold(graph, node, lead, vals[0]), before,
                              f"the same over {lead} leading dims folded into one",
                              "torch.onnx translates only 4-D attention"))
    return PassResult(gm, changes)


def _meta(node: torch.fx.Node) -> dict:
    return {m: node.meta[m] for m in ("stack_trace", "nn_module_stack") if m in node.meta}


def _replace(graph: torch.fx.Graph, node: torch.fx.Node, attend: torch.fx.Node, target: object, args: tuple
             ) -> torch.fx.Node:
    """``node``'s uses go to ``target(attend, *args)``, which takes ``node``'s value; ``node`` goes."""
    with graph.inserting_after(attend):
        back = graph.call_function(target, (attend, *args))
    back.meta.update(_meta(node))
    if "val" in node.meta:
        back.meta["val"] = node.meta["val"]
    node.replace_all_uses_with(back)
    graph.erase_node(node)
    return back


def _lift(graph: torch.fx.Graph, node: torch.fx.Node, lead: int) -> torch.fx.Node:
    """Attention over 2-D or 3-D tensors (timm's SAM ViT: ``(B*heads, N, E)``) with ``lead``
    dims of 1 in front. A mask broadcasts from the right, so it stays as it is."""
    meta = _meta(node)
    with graph.inserting_before(node):
        lifted = []
        for t in node.args[:3]:
            for _ in range(lead):
                t = graph.call_function(aten.unsqueeze.default, (t, 0))
                t.meta.update(meta)
                fake_value(t)
            lifted.append(t)
        attend = graph.call_function(SDPA, (*lifted, *node.args[3:]), dict(node.kwargs))
        attend.meta.update(meta)
        fake_value(attend)
    return _replace(graph, node, attend, aten.squeeze.dims, (list(range(lead)),))


def _fold(graph: torch.fx.Graph, node: torch.fx.Node, lead: int, query: torch.Tensor) -> torch.fx.Node:
    """Attention over more than 4-D tensors with its ``lead`` leading dims folded into one."""
    meta = _meta(node)
    q = node.args[0]
    with graph.inserting_before(node):
        folded = []
        for t in node.args[:3]:
            f = graph.call_function(aten.flatten.using_ints, (t, 0, lead - 1))
            f.meta.update(meta)
            fake_value(f)
            folded.append(f)
        sizes = []
        for i in range(lead):
            size = query.shape[i]
            if isinstance(size, torch.SymInt):
                s = graph.call_function(aten.sym_size.int, (q, i))
                s.meta.update(meta)
                s.meta["val"] = size
                sizes.append(s)
            else:
                sizes.append(int(size))
        attend = graph.call_function(SDPA, (*folded, *node.args[3:]), dict(node.kwargs))
        attend.meta.update(meta)
        fake_value(attend)
    return _replace(graph, node, attend, aten.unflatten.int, (0, sizes))
