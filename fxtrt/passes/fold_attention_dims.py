"""Fold the leading dims of attention over more than 4-D tensors into one, and unfold after.

``F.scaled_dot_product_attention`` takes query, key and value of any rank ``(..., L, E)``: timm's
hiera, nest and twins attend over ``(B, windows, heads, L, E)``. torch.onnx's translator accepts
only 4-D ("only 4D query, key, and value are supported"). Attention is independent along the
leading dims, so folding them into one batch dim is exact when query, key and value share them.

Before:  sdpa = scaled_dot_product_attention(q, k, v)            # q, k, v: [s0, 4, 2, 6, 8]
After:   q4 = flatten(q, 0, 1); k4 = flatten(k, 0, 1); v4 = flatten(v, 0, 1)   # [4*s0, 2, 6, 8]
         sdpa4 = scaled_dot_product_attention(q4, k4, v4)
         sdpa = unflatten(sdpa4, 0, [sym_size(q, 0), 4])          # [s0, 4, 2, 6, 8]

Left alone: a mask of more than 2-D (it may broadcast over the folded dims differently), and
leading dims that differ between query, key and value (broadcasting).
"""
from __future__ import annotations

import torch
import torch.fx

from fxtrt.passes.infra import PassContext, PassResult, call_text, change, fake_value, graph_pass

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default


def _val(node: object) -> torch.Tensor | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return val if isinstance(val, torch.Tensor) else None


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.SymInt) or isinstance(b, torch.SymInt):
        return isinstance(a, torch.SymInt) and isinstance(b, torch.SymInt) and a.node.expr == b.node.expr
    return a == b


@graph_pass(requires=("generalize_batch",))
def fold_attention_dims(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    changes = []
    graph = gm.graph
    for node in list(graph.find_nodes(op="call_function", target=SDPA)):
        q, k, v = node.args[:3]
        vals = [_val(q), _val(k), _val(v)]
        if any(t is None for t in vals) or vals[0].dim() <= 4 or len({t.dim() for t in vals}) != 1:
            continue
        mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
        if mask is not None and (_val(mask) is None or _val(mask).dim() > 2):
            continue
        lead = vals[0].dim() - 3
        if not all(_same(a, b) for t in vals[1:] for a, b in zip(vals[0].shape[:lead], t.shape[:lead])):
            continue
        before = call_text(node)
        meta = {m: node.meta[m] for m in ("stack_trace", "nn_module_stack") if m in node.meta}
        with graph.inserting_before(node):
            folded = []
            for t in (q, k, v):
                f = graph.call_function(aten.flatten.using_ints, (t, 0, lead - 1))
                f.meta.update(meta)
                fake_value(f)
                folded.append(f)
            sizes = []
            for i in range(lead):
                size = vals[0].shape[i]
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
        with graph.inserting_after(attend):
            back = graph.call_function(aten.unflatten.int, (attend, 0, sizes))
        back.meta.update(meta)
        if "val" in node.meta:
            back.meta["val"] = node.meta["val"]
        node.replace_all_uses_with(back)
        graph.erase_node(node)
        changes.append(change(back, before, f"the same over {lead} leading dims folded into one",
                              "torch.onnx translates only 4-D attention"))
    if changes:
        graph.lint()
        gm.recompile()
    return PassResult(gm, changes)
