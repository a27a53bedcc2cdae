"""Drop the asserts torch.export leaves in the graph.

They check the traced example's exact shapes and dtypes, so a dynamic-batch model would fail
them at every other batch size. The ONNX emitter re-derives whatever checks it needs.

Before:  _assert_tensor_metadata(x, [2, 3, 224, 224], ...);  conv2d(x, w)
After:   conv2d(x, w)
"""
from __future__ import annotations

import torch
import torch.fx

from fxtrt.passes.infra import PassContext, PassResult, call_text, change

aten = torch.ops.aten

GUARD_TARGETS = frozenset(
    t
    for t in (
        getattr(aten, "_assert_tensor_metadata", None),
        getattr(aten, "_assert_scalar", None),
        getattr(aten, "_assert_async", None),
        getattr(aten, "sym_constrain_range", None),
        getattr(aten, "sym_constrain_range_for_size", None),
        getattr(aten, "_functional_assert_async", None),
        getattr(aten, "_functional_sym_constrain_range", None),
        getattr(aten, "_functional_sym_constrain_range_for_size", None),
    )
    if t is not None
)


def is_shape_guard(node: torch.fx.Node) -> bool:
    if node.op != "call_function":
        return False
    target = node.target
    packet = getattr(target, "overloadpacket", target)
    return packet in GUARD_TARGETS or target in GUARD_TARGETS


def drop_shape_guards(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    """Remove every export-time assertion node (and the guard scalars feeding only them)."""
    changes = []
    for node in reversed(list(gm.graph.nodes)):
        if is_shape_guard(node) and not node.users:
            changes.append(change(node, call_text(node), "(removed)", "export-time shape guard"))
            gm.graph.erase_node(node)
    changes.reverse()
    if changes:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return PassResult(gm, changes)
