"""Fold Python numbers read from constants: ``.item()``, ``.tolist()``, ``int(t)`` on tensors
computed only from parameters, buffers and constants become the values they are.

A read from a tensor is a value torch.export cannot know, so it stays a symbol and the graph
depends on it. When the tensor is a constant of the model (ultralytics' ``stride`` buffer, read
with ``.item()`` by ``make_anchors``) the value is known: it is the same at every size. Reads
from the inputs are left alone; ``generalize_batch`` refuses them at the user's line.

Before:  select = select(b_stride, 0, 0);  item = _local_scalar_dense(select)
         full = full([s0*s1, 1], item)
After:   full = full([s0*s1, 1], 8.0)
"""
from __future__ import annotations

import math
import operator

import torch
import torch.fx
import torch.utils._pytree as pytree

from fxtrt.graph import SCALAR_READS
from fxtrt.passes.evaluate import evaluate
from fxtrt.passes.infra import PassContext, PassResult, change, fmt, graph_pass

aten = torch.ops.aten

# Scalar arithmetic on a folded number folds too (``stride * 0.5``, ``int(stride)``).
_SCALAR_OPS = frozenset({
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.mod,
    operator.neg, operator.pow, operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge,
    math.floor, math.ceil, math.sqrt, int, float, bool,
    torch.sym_float, torch.sym_int, torch.sym_max, torch.sym_min, torch.sym_sqrt,
})


def _constant_inputs(gm: torch.fx.GraphModule) -> set[torch.fx.Node]:
    """Nodes computed only from get_attr and literals (no input reaches them)."""
    const: set[torch.fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            const.add(node)
        elif node.op == "call_function" and node.all_input_nodes and all(a in const for a in node.all_input_nodes):
            const.add(node)
    return const


def _replace_with_value(node: torch.fx.Node, value: object) -> None:
    for user in list(node.users):
        user.args = pytree.tree_map(lambda a: value if a is node else a, user.args)
        user.kwargs = pytree.tree_map(lambda a: value if a is node else a, user.kwargs)


@graph_pass(always_runs=True, finding="constant-read")
def fold_constant_reads(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    """Replace each read of a constant tensor's value (and scalar math on it) with the number."""
    changes = []
    const = _constant_inputs(gm)
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in SCALAR_READS or node not in const:
            continue
        value = evaluate(gm, node)
        changes.append(change(node, f"{fmt(node.args[0])}.item()", repr(value),
                              "value read from a constant of the model folded"))
        _replace_with_value(node, value)
    if not changes:
        return PassResult(gm, changes)
    folded = True
    while folded:  # scalar math on folded numbers: now all-literal calls
        folded = False
        for node in list(gm.graph.nodes):
            if node.op == "call_function" and node.target in _SCALAR_OPS and node.users and not node.all_input_nodes:
                _replace_with_value(node, node.target(*node.args, **node.kwargs))
                folded = True
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return PassResult(gm, changes)
