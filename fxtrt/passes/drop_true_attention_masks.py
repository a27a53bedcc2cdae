"""Drop attention masks that mask nothing: a constant all-True boolean mask, or an all-zero float one.

transformers builds the mask even for a model that has no padding. Under torch.export it is built
as ``arange(L) >= 0`` broadcast to ``(B, 1, L, L)`` (hf ViT, Whisper's encoder). torch.onnx
translates attention with a boolean mask into the mask form of attention. That form has a
``Where(mask, 0, -inf)``, an ``Add`` of it to the scores, and an ``IsNaN`` + ``Where`` guard
after the softmax. That is three extra passes over the ``(B, H, L, L)`` scores per layer, which
cost hf/vit 1.7x the legacy exporter's latency on ONNX Runtime at batch 8 (issue 19, item 4).
Attention with a mask that keeps every position is attention without one, value for value.

Before:  ge = ge(unsqueeze(arange(197)), 0);  mask = expand(ge, [s0, -1, 197, 197])
         sdpa = scaled_dot_product_attention(q, k, v, mask)
After:   sdpa = scaled_dot_product_attention(q, k, v)

A mask is dropped only when it is computed from constants alone (get_attr, literals, and sizes
for broadcasting) and its values are known here. A mask that depends on an input's values, such
as BERT's padding mask, is left alone.
"""
from __future__ import annotations

import torch
import torch.fx

from fxtrt.passes.evaluate import cone, evaluate
from fxtrt.passes.infra import PassContext, PassResult, call_text, change, graph_pass

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default
# Ops that only broadcast or view the mask: whether it masks anything is their input's question.
_BROADCASTS = frozenset({aten.expand.default, aten.view.default, aten.reshape.default, aten.unsqueeze.default,
                         aten.alias.default, aten.clone.default, aten.contiguous.default})
_MASK_ARG = 3


def _mask_of(node: torch.fx.Node) -> tuple[torch.fx.Node | None, bool]:
    """The attention mask argument, and whether it was passed by keyword."""
    if len(node.args) > _MASK_ARG:
        mask = node.args[_MASK_ARG]
        return (mask if isinstance(mask, torch.fx.Node) else None), False
    mask = node.kwargs.get("attn_mask")
    return (mask if isinstance(mask, torch.fx.Node) else None), True


def _source(mask: torch.fx.Node) -> torch.fx.Node:
    """The tensor the mask broadcasts or views; its values decide whether the mask masks anything."""
    while mask.op == "call_function" and mask.target in _BROADCASTS:
        mask = mask.args[0]
    return mask


def _constant_value(gm: torch.fx.GraphModule, node: torch.fx.Node) -> torch.Tensor | None:
    """``node``'s value when it is computed from get_attr and literals alone (no input, nothing
    random), else None."""
    for n in cone(node):
        random = n.op == "call_function" and torch.Tag.nondeterministic_seeded in getattr(n.target, "tags", ())
        if n.op not in ("get_attr", "call_function") or random:
            return None
    value = evaluate(gm, node)
    return value if isinstance(value, torch.Tensor) else None


def _masks_nothing(value: torch.Tensor | None) -> bool:
    if value is None:
        return False
    if value.dtype == torch.bool:
        return bool(value.all())
    return value.is_floating_point() and not bool(value.any())


@graph_pass()
def drop_true_attention_masks(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    changes = []
    for node in list(gm.graph.find_nodes(op="call_function", target=SDPA)):
        mask, by_keyword = _mask_of(node)
        if mask is None or not _masks_nothing(_constant_value(gm, _source(mask))):
            continue
        before = call_text(node)
        if by_keyword:
            node.kwargs = {k: v for k, v in node.kwargs.items() if k != "attn_mask"}
        else:
            node.args = (*node.args[:_MASK_ARG], None, *node.args[_MASK_ARG + 1:])
        changes.append(change(node, before, call_text(node),
                              "the attention mask keeps every position: attention without it is the same"))
    if changes:
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
    return PassResult(gm, changes)
