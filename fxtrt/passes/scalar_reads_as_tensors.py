"""Turn a float read from an input that only scales tensors back into tensor arithmetic.

``y * s.item()`` with ``s`` a float input is a SymFloat in torch.export: a value only known at run
time, which never sets a size. Left as it is, ``generalize_batch`` refuses every read from an
input. When every use of the number is arithmetic that ends in a tensor op's operand (``mul``,
``add``, ``sub``, ``div``, ``pow``, directly or through Python arithmetic on the number), the read
is the 0-d tensor itself, cast to float32 as a Python float would promote, and the ops take it
as a tensor. A read that reaches anything else (a size, an ``arange`` end, a dropout ``p``) is left
for ``generalize_batch`` to refuse at its line.

Before:  item = item(s);  mul_1 = mul(item, 2.0);  mul = mul.Tensor(y, mul_1)
After:   s_0d = _to_copy(reshape(s, []), float32);  mul_1 = mul.Tensor(s_0d, 2.0);  mul = mul.Tensor(y, mul_1)
"""
from __future__ import annotations

import operator

import torch
import torch.fx

from fxtrt.graph import SCALAR_READS
from fxtrt.passes.infra import PassContext, PassResult, change, fake_value, graph_pass

aten = torch.ops.aten

# Python arithmetic on the number, and the tensor op that computes the same on a 0-d tensor.
_PYTHON = {operator.add: aten.add.Tensor, operator.sub: aten.sub.Tensor, operator.mul: aten.mul.Tensor,
           operator.truediv: aten.div.Tensor, operator.neg: aten.neg.default, operator.pow: aten.pow.Tensor_Tensor,
           torch.sym_float: None}
# Tensor ops that take the number as an operand, and the overload that takes a tensor there.
_TENSOR = {aten.mul.Tensor: aten.mul.Tensor, aten.mul.Scalar: aten.mul.Tensor,
           aten.add.Tensor: aten.add.Tensor, aten.add.Scalar: aten.add.Tensor,
           aten.sub.Tensor: aten.sub.Tensor, aten.sub.Scalar: aten.sub.Tensor,
           aten.div.Tensor: aten.div.Tensor, aten.div.Scalar: aten.div.Tensor,
           aten.rsub.Scalar: aten.rsub.Tensor, aten.pow.Tensor_Scalar: aten.pow.Tensor_Tensor}


def _scalar_closure(read: torch.fx.Node) -> tuple[list[torch.fx.Node], list[torch.fx.Node]] | None:
    """The Python-arithmetic nodes fed by ``read`` and the tensor ops they end in, or None when
    the number reaches anything else."""
    scalars, consumers, todo = [read], [], [read]
    while todo:
        node = todo.pop()
        for user in node.users:
            if user.op != "call_function":
                return None
            if user.target in _PYTHON:
                if user not in scalars:
                    scalars.append(user)
                    todo.append(user)
            elif user.target in _TENSOR and isinstance(user.args[0], torch.fx.Node) and user.args[0] not in scalars:
                if user.kwargs:
                    return None
                if user not in consumers:
                    consumers.append(user)
            else:
                return None
    return scalars, consumers


@graph_pass(always_runs=True)
def scalar_reads_as_tensors(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    changes = []
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for read in [n for n in gm.graph.nodes if n.op == "call_function" and n.target in SCALAR_READS]:
        src = read.args[0]
        val = src.meta.get("val") if isinstance(src, torch.fx.Node) else None
        if not isinstance(val, torch.Tensor) or not val.is_floating_point() or any(
                not isinstance(d, int) or d != 1 for d in val.shape):
            continue
        mode = getattr(val, "fake_mode", None)
        found = _scalar_closure(read) if mode is not None else None
        if found is None or not found[1]:
            continue
        scalars, consumers = found
        meta = {k: read.meta[k] for k in ("stack_trace", "nn_module_stack") if k in read.meta}
        tensor_of: dict[torch.fx.Node, torch.fx.Node] = {}

        def as_tensor(value: object) -> object:
            return tensor_of[value] if isinstance(value, torch.fx.Node) and value in tensor_of else value

        with gm.graph.inserting_before(read):
            flat = gm.graph.call_function(aten.reshape.default, (src, []))
            flat.meta.update(meta)
            fake_value(flat, mode)
            zero_d = gm.graph.call_function(aten._to_copy.default, (flat,), {"dtype": torch.float32})
            zero_d.meta.update(meta)
            fake_value(zero_d, mode)
        tensor_of[read] = zero_d
        for node in sorted(scalars[1:], key=order.__getitem__):
            op = _PYTHON[node.target]
            args = [as_tensor(a) for a in node.args]
            if op is None:  # sym_float: already a float tensor
                tensor_of[node] = args[0]  # type: ignore[assignment]
                continue
            if not isinstance(args[0], torch.fx.Node):  # 2.0 * s: the number first
                with gm.graph.inserting_before(node):
                    first = gm.graph.call_function(aten.scalar_tensor.default, (args[0],), {"dtype": torch.float32})
                    first.meta.update(meta)
                    fake_value(first, mode)
                args[0] = first
            with gm.graph.inserting_before(node):
                new = gm.graph.call_function(op, tuple(args))
            new.meta.update(meta)
            fake_value(new, mode)
            tensor_of[node] = new
        for user in consumers:
            user.target = _TENSOR[user.target]
            user.args = tuple(as_tensor(a) for a in user.args)
        for node in reversed(sorted(scalars, key=order.__getitem__)):
            if not node.users:
                gm.graph.erase_node(node)
        changes.append(change(read, f"{read.name} = item({src.name})", f"{zero_d.name} = float32 0-d {src.name}",
                              "a float read from an input only scales tensors: kept as a tensor"))
    if changes:
        gm.graph.lint()
        gm.recompile()
    return PassResult(gm, changes)
