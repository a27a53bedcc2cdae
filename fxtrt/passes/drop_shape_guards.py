"""Drop the asserts torch.export leaves in the graph.

They check the traced example's exact shapes and dtypes, so a dynamic-batch model would fail
them at every other batch size. The ONNX emitter re-derives whatever checks it needs.

Before:  _assert_tensor_metadata(x, [2, 3, 224, 224], ...);  conv2d(x, w)
After:   conv2d(x, w)
"""
from __future__ import annotations

import torch
import torch.fx

from fxtrt.passes.infra import PassContext, PassResult, call_text, change, graph_pass

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


def guard_nodes(gm: torch.fx.GraphModule) -> set[torch.fx.Node]:
    """The guards, and the size arithmetic (``ge``, ``le``, ``sym_size``) that only guards use."""
    found: set[torch.fx.Node] = set()
    for node in reversed(list(gm.graph.nodes)):
        if is_shape_guard(node) or (
            node.op == "call_function" and node.users and all(u in found for u in node.users)
        ):
            found.add(node)
    return found


@graph_pass(always_runs=True)
def drop_shape_guards(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    """Remove every export-time assertion node and the computations that feed only them."""
    doomed = guard_nodes(gm)
    changes = [change(n, call_text(n), "(removed)", "export-time shape guard")
               for n in gm.graph.nodes if n in doomed and is_shape_guard(n)]
    for node in reversed(list(gm.graph.nodes)):
        if node in doomed:
            gm.graph.erase_node(node)
    if doomed:
        gm.recompile()
    return PassResult(gm, changes)
