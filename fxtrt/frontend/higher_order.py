"""Higher-order ops in a captured graph: what fxtrt does with each one torch.export can write.

torch.export keeps control flow, and the context managers it cannot erase, as higher-order ops
that call a subgraph: a GraphModule attribute of the graph, fetched by a ``get_attr`` node, with
the same symbolic sizes as the model's graph (``true_graph_0``'s ``x`` is ``[s77, 4]``).

- **emitted**: ``cond`` (ONNX ``If``), ``scan`` (``Scan``), ``while_loop`` (``Loop``): torch.onnx
  translates them itself, given the subgraphs as attributes of the program.
- **rewritten**: ``map_impl`` (``torch._higher_order_ops.map``) becomes a ``scan`` with no carried
  state, the same loop over dim 0 of its inputs; torch.onnx has no ``map``.
- **inlined**: ``wrap_with_set_grad_enabled`` (``torch.no_grad()``, ``torch.enable_grad()``): grad
  mode changes no value in inference. ``wrap_with_autocast`` when *disabled*
  (``torch.autocast("cpu", enabled=False)``, timm's efficientvit): the region then runs at its
  tensors' own dtypes, which is what its ops say without the wrapper, since fxtrt compiles the
  model outside any autocast. Both are exact.
- **left to torch.onnx**: ``wrap_with_autocast`` when *enabled*: inlining it would drop the casts
  autocast makes and compute the region in float32, unlike eager. torch.onnx's decompositions run
  the region under the same autocast policy and write its casts out (bf16 ``Cast`` + ``Gemm``),
  so the ONNX model computes what eager does (and is verified like any other).
- **refused**: every other one (``flex_attention``, ``associative_scan``, ``with_effects`` from a
  ``print`` in forward, ...): an ``EmitError`` naming the op and the model's line, at capture.

Before:  submod_3 = self.submod_1
         linear = wrap_with_set_grad_enabled(False, submod_3, add, lin_weight, lin_bias)
         getitem = linear[0]
After:   linear = linear.default(add, lin_weight, lin_bias)      # the subgraph's nodes, in place
"""
from __future__ import annotations

import operator
from typing import Any, Iterator

import torch
import torch.fx

from fxtrt.errors import EmitError
from fxtrt.frontend.source import source_of

hop = torch.ops.higher_order

# torch.onnx translates these itself (torch/onnx/_internal/exporter/_torchlib/ops/hop.py).
EMITTED = frozenset({"cond", "scan", "while_loop"})
# Plain calls of a subgraph in inference: (op name, index of the subgraph argument).
INLINED = {"wrap_with_set_grad_enabled": 1, "wrap_with_autocast": 4}
REWRITTEN = frozenset({"map_impl"})

_HINTS = {
    "flex_attention": "use torch.nn.functional.scaled_dot_product_attention with a mask instead",
    "associative_scan": "use torch.cumsum / torch.cumprod, or torch._higher_order_ops.scan, which fxtrt emits",
    "with_effects": "remove print / side effects from forward",
    "print": "remove torch._higher_order_ops.print from forward",
}


def is_higher_order(node: torch.fx.Node) -> bool:
    return node.op == "call_function" and isinstance(node.target, torch._ops.HigherOrderOperator)


def _attr(module: torch.nn.Module, target: str) -> Any:
    obj: Any = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def subgraphs(gm: torch.fx.GraphModule, prefix: str = "") -> Iterator[tuple[str, torch.fx.GraphModule]]:
    """Every subgraph a higher-order op of ``gm`` calls, nested ones too, as (dotted path, module),
    each parent before its children."""
    seen: set[str] = set()
    for node in gm.graph.nodes:
        if not is_higher_order(node):
            continue
        for arg in node.args:
            if isinstance(arg, torch.fx.Node) and arg.op == "get_attr" and arg.target not in seen:
                value = _attr(gm, arg.target)
                if isinstance(value, torch.fx.GraphModule):
                    seen.add(arg.target)
                    yield prefix + arg.target, value
                    yield from subgraphs(value, prefix + arg.target + ".")


def hop_source(gm: torch.fx.GraphModule, node: torch.fx.Node) -> str | None:
    """The model's line for a higher-order op: its own, else the first line inside its subgraphs
    (torch writes the ``no_grad`` wrapper without a stack trace)."""
    found = source_of(node)
    if found:
        return found
    for arg in node.args:
        if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
            value = _attr(gm, arg.target)
            if isinstance(value, torch.fx.GraphModule):
                found = next((s for n in value.graph.nodes if (s := source_of(n))), None)
                if found:
                    return found
    return None


def lower_higher_order(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Inline the plain subgraph calls, rewrite ``map`` as ``scan``, in ``gm`` and in every
    subgraph; refuse any higher-order op torch.onnx cannot emit, with its name and line."""
    changed = False
    for node in list(gm.graph.nodes):
        if not is_higher_order(node):
            continue
        name = node.target.name()
        if name in INLINED:
            if name == "wrap_with_autocast" and node.args[2]:
                continue  # enabled: torch.onnx writes out its casts (see the module docstring)
            _inline(gm, node, INLINED[name])
            changed = True
        elif name in REWRITTEN:
            _map_as_scan(gm, node)
            changed = True
        elif name not in EMITTED:
            raise EmitError(
                f"torch.ops.higher_order.{name} cannot be emitted to ONNX: fxtrt emits cond, scan, map and while_loop, "
                "and inlines no_grad / disabled-autocast regions",
                node=node.name, source=hop_source(gm, node),
                hint=_HINTS.get(name, "rewrite that code with plain torch ops, or keep it out of the compiled model"),
            )
    if changed:  # an inlined region may hold higher-order ops of its own
        gm.recompile()
        return lower_higher_order(gm)
    for path, sub in list(subgraphs(gm)):
        if "." not in path:
            lower_higher_order(sub)
    gm.graph.lint()
    return gm


def _inline(gm: torch.fx.GraphModule, node: torch.fx.Node, index: int) -> None:
    """Replace ``node`` (a call of the subgraph at ``node.args[index]``) by the subgraph's nodes."""
    attr = node.args[index]
    sub = _attr(gm, attr.target)
    operands = node.args[index + 1:]
    placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(operands) or node.kwargs or any(
            u.op != "call_function" or u.target is not operator.getitem for u in node.users):
        raise EmitError(f"{node.target.name()} calls its subgraph in a way fxtrt does not inline: "
                        f"{len(operands)} operands for {len(placeholders)} inputs",
                        node=node.name, source=hop_source(gm, node), hint="please report this with the model")
    env: dict[torch.fx.Node, Any] = dict(zip(placeholders, operands))
    with gm.graph.inserting_before(node):
        outputs = gm.graph.graph_copy(sub.graph, env)
    for inner in sub.graph.find_nodes(op="get_attr"):  # a nested subgraph or constant: now gm's
        copied = env[inner]
        copied.target = _free_name(gm, inner.target.replace(".", "_"))
        setattr(gm, copied.target, _attr(sub, inner.target))
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    for user in list(node.users):
        user.replace_all_uses_with(outputs[user.args[1]])
        gm.graph.erase_node(user)
    gm.graph.erase_node(node)
    if not attr.users:
        gm.graph.erase_node(attr)
        if not gm.graph.find_nodes(op="get_attr", target=attr.target):
            delattr(gm, attr.target)


def _map_as_scan(gm: torch.fx.GraphModule, node: torch.fx.Node) -> None:
    """``map_impl(body, xs, args)`` -> ``scan(body, [], xs, args)``: a scan that carries nothing
    applies its body to each slice of ``xs`` along dim 0 and stacks the results, as map does."""
    body, xs, args = node.args
    with gm.graph.inserting_before(node):
        scan = gm.graph.call_function(hop.scan, (body, [], list(xs), tuple(args)))
    scan.meta = dict(node.meta)
    node.replace_all_uses_with(scan)
    gm.graph.erase_node(node)


def _free_name(gm: torch.nn.Module, base: str) -> str:
    name, k = base, 0
    while hasattr(gm, name):
        k += 1
        name = f"{base}_{k}"
    return name

