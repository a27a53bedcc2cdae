"""Make dtypes TensorRT takes: no float64 anywhere, no bool in arithmetic.

TensorRT has no float64, and bool masks that flow into arithmetic trip its type checks; the
seed's fix is ``(tgt_in == eos_id).float()``. Both rewrites keep the values (float64 → float32
loses only precision beyond float32, reported per change).

Before:  mul(linear, b_scale)            # b_scale: float64 buffer → the whole tail is float64
After:   mul(linear, b_scale)            # b_scale: float32

Before:  eq = eq(tgt, 2);  mul(x, eq)    # bool promoted implicitly
After:   eq = eq(tgt, 2);  eq_f = _to_copy(eq, dtype=float32);  mul(x, eq_f)
"""
from __future__ import annotations

import torch
import torch.fx
import torch.utils._pytree as pytree

from fxtrt.passes.infra import PassContext, PassResult, call_text, change, graph_pass

aten = torch.ops.aten

# Ops that do arithmetic on their tensor inputs (bool inputs get promoted).
ARITHMETIC = frozenset(
    {
        aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor, aten.rsub.Tensor,
        aten.mm.default, aten.bmm.default, aten.matmul.default, aten.sum.dim_IntList,
        aten.sum.default, aten.mean.dim, aten.mean.default, aten.cumsum.default,
        aten.addmm.default, aten.linear.default,
    }
)


def _val(node: torch.fx.Node):
    v = node.meta.get("val")
    return v if isinstance(v, torch.Tensor) else None


@graph_pass(finding="dtype")
def fix_dtypes(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    changes = []
    for node in list(gm.graph.nodes):
        if node.op == "get_attr":
            owner, _, attr = node.target.rpartition(".")
            mod = gm.get_submodule(owner) if owner else gm
            value = getattr(mod, attr, None)
            if isinstance(value, torch.Tensor) and value.dtype == torch.float64:
                as32 = value.detach().to(torch.float32)
                if isinstance(value, torch.nn.Parameter):
                    setattr(mod, attr, torch.nn.Parameter(as32, requires_grad=False))
                else:
                    setattr(mod, attr, as32)
                changes.append(change(node, f"{node.target}: float64 {list(value.shape)}",
                                      f"{node.target}: float32", "TensorRT has no float64"))
        elif node.op == "placeholder":
            v = _val(node)
            if v is not None and v.dtype == torch.float64:
                changes.append(change(node, f"input {node.name}: float64", f"input {node.name}: float32",
                                      "the ONNX input is float32; compiled.run casts float64 inputs"))
        elif node.op == "call_function":
            leaves, spec = pytree.tree_flatten((node.args, node.kwargs))
            if any(x is torch.float64 for x in leaves):
                before = call_text(node)
                leaves = [torch.float32 if x is torch.float64 else x for x in leaves]
                node.args, node.kwargs = pytree.tree_unflatten(leaves, spec)
                changes.append(change(node, before, call_text(node), "float64 computation done in float32"))
            changes.extend(_cast_bool_operands(gm, node))
    if changes:
        gm.graph.lint()
        gm.recompile()
    return PassResult(gm, changes)


def _cast_bool_operands(gm: torch.fx.GraphModule, node: torch.fx.Node):
    """Cast bool operands of arithmetic to float32, where the result is floating anyway."""
    if node.target not in ARITHMETIC:
        return []
    out = _val(node)
    if out is None or not out.dtype.is_floating_point:
        return []
    changes = []
    for arg in node.all_input_nodes:
        v = _val(arg)
        if v is None or v.dtype != torch.bool:
            continue
        with gm.graph.inserting_after(arg):
            cast = gm.graph.call_function(aten._to_copy.default, (arg,), {"dtype": torch.float32})
        cast.meta = {k: arg.meta[k] for k in ("stack_trace", "nn_module_stack") if k in arg.meta}
        cast.meta["val"] = v.to(torch.float32)
        before = call_text(node)
        node.replace_input_with(arg, cast)
        changes.append(change(arg, f"{arg.name} (bool) used in {before}",
                              f"{cast.name} = {call_text(cast)}", "bool mask cast to float before arithmetic"))
    return changes
