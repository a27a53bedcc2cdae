"""Run the part of a graph one node depends on, on the module's real weights.

Passes that fold a value the graph computes from constants alone (``fold_constant_reads``: an
``.item()`` on a buffer; ``drop_true_attention_masks``: a mask built from ``arange``) share this.
It is not a pass: it rewrites nothing.
"""
from __future__ import annotations

import torch
import torch.fx


def cone(target: torch.fx.Node) -> list[torch.fx.Node]:
    """``target`` and every node it depends on, each once."""
    seen: dict[torch.fx.Node, None] = {}
    stack = [target]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen[n] = None
            stack.extend(n.all_input_nodes)
    return list(seen)


def attribute(gm: torch.fx.GraphModule, target: str) -> object:
    """The module attribute a ``get_attr`` node reads (``"layer.0.mask"``)."""
    obj: object = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def evaluate(gm: torch.fx.GraphModule, target: torch.fx.Node) -> object:
    """``target``'s value, computed from its cone in graph order without autograd. The cone must
    hold only ``get_attr`` and ``call_function`` nodes (the caller checks it is constant)."""
    position = {n: i for i, n in enumerate(gm.graph.nodes)}
    env: dict[torch.fx.Node, object] = {}
    with torch.no_grad():
        for n in sorted(cone(target), key=position.__getitem__):
            if n.op == "get_attr":
                env[n] = attribute(gm, str(n.target))
            else:
                args, kwargs = torch.fx.node.map_arg((n.args, n.kwargs), env.__getitem__)
                env[n] = n.target(*args, **kwargs)
    return env[target]
