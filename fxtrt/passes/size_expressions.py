"""Size expressions as graph nodes, and literals fitted to them, for ``generalize_batch``.

``SizeBuilder`` writes ``a*B + c`` as ``sym_size`` / ``mul`` / ``add`` nodes right after the
placeholders, once each; ``LiteralFitter`` fits a literal's values at the fit traces to such an
expression and checks it at the check traces; ``explicit_split`` and ``generalize_constant``
rewrite the two node kinds whose size-following part is not a plain argument.

Before (a literal traced as 2 at B=2 and 3 at B=3):   view(conv, [2, -1])
After:                                                B = sym_size(x, 0);  view(conv, [B, -1])
"""
from __future__ import annotations

import operator
from fractions import Fraction
from typing import Any, Callable, Sequence

import torch
import torch.fx

from fxtrt.errors import GeneralizationError
from fxtrt.frontend.source import source_of
from fxtrt.passes.affine import Expr, fit
from fxtrt.passes.infra import Change, call_text, change, fmt
from fxtrt.settings import DynamicDim

aten = torch.ops.aten


def node_shape(node: torch.fx.Node) -> tuple[Any, ...] | None:
    """The traced shape: ints, and SymInts for the dims that stayed symbolic."""
    v = node.meta.get("val")
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None


class SizeBuilder:
    """Creates size expressions as graph nodes, once each, right after the placeholders."""

    def __init__(self, gm: torch.fx.GraphModule, dims: Sequence[DynamicDim],
                 operand_sites: dict[str, tuple[int, int]] | None = None) -> None:
        self.gm = gm
        # In a subgraph of a higher-order op the placeholders are its operands, not the model's
        # inputs: a dim is read off the operand axis that has its size in every trace.
        self.operand_sites = operand_sites
        self.graph = gm.graph
        placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
        self.anchor = placeholders[-1]
        self.syms: dict[str, torch.fx.Node] = {}
        self.cache: dict[Any, torch.fx.Node] = {}
        self.dims = {d.name: d for d in dims}
        self.placeholders = placeholders

    def call(self, target: Callable, args: tuple) -> torch.fx.Node:
        with self.graph.inserting_after(self.anchor):
            node = self.graph.call_function(target, args)
        self.anchor = node
        return node

    def get_attr(self, name: str) -> torch.fx.Node:
        with self.graph.inserting_after(self.anchor):
            node = self.graph.get_attr(name)
        self.anchor = node
        return node

    def sym(self, name: str) -> torch.fx.Node:
        if name not in self.syms:
            if self.operand_sites is None:
                i, axis = self.dims[name].sites[0]
            elif name in self.operand_sites:
                i, axis = self.operand_sites[name]
            else:
                raise NotImplementedError(f"a size in it follows the baked dim '{name}', and no operand of the "
                                          f"subgraph has '{name}' as a dim to read it from")
            node = self.call(aten.sym_size.int, (self.placeholders[i], axis))
            node.meta["fxtrt_dim"] = name
            node.meta["fxtrt_expr"] = name
            self.syms[name] = node
        return self.syms[name]

    def expr(self, e: Expr) -> Any:
        """A node (or int) computing the integral expression ``e``."""
        key = e.terms
        if key in self.cache:
            return self.cache[key]
        total: Any = None
        const = 0
        for dims, c in e.terms:
            if c == 0:
                continue
            if not dims:
                const = int(c)
                continue
            term: Any = self.sym(dims[0])
            for d in dims[1:]:
                term = self.call(operator.mul, (term, self.sym(d)))
            if c != 1:
                term = self.call(operator.mul, (term, int(c)))
            total = term if total is None else self.call(operator.add, (total, term))
        if total is None:
            return const
        if const:
            total = self.call(operator.add, (total, const))
        total.meta["fxtrt_expr"] = str(e)
        self.cache[key] = total
        return total

    def inverse(self, numerator: float, dim: str) -> torch.fx.Node:
        key = ("inv", numerator, dim)
        if key not in self.cache:
            self.cache[key] = self.call(operator.truediv, (numerator, self.sym(dim)))
            self.cache[key].meta["fxtrt_expr"] = f"{numerator!r}/{dim}"
        return self.cache[key]


def operand_sites(traces: Sequence[Any], names: Sequence[str],
                   points: Sequence[dict[str, int]]) -> dict[str, tuple[int, int]]:
    """For a subgraph: per baked dim, the first (operand, axis) whose size is the dim's size in
    every trace (fitted and checked), as ``sites`` are for the model's inputs."""
    operands = [[n for n in t.gm.graph.nodes if n.op == "placeholder"] for t in traces]
    sites: dict[str, tuple[int, int]] = {}
    for name in names:
        for i in range(len(operands[0])):
            shapes = [node_shape(ops[i]) if i < len(ops) else None for ops in operands]
            if any(s is None or len(s) != len(shapes[0]) for s in shapes):
                continue
            axis = next((a for a in range(len(shapes[0]))
                         if all(isinstance(s[a], int) and s[a] == p[name] for s, p in zip(shapes, points))), None)
            if axis is not None:
                sites[name] = (i, axis)
                break
    return sites


SPLITS = frozenset({aten.chunk.default, aten.split.Tensor})


def _pieces(node: torch.fx.Node) -> list[tuple[Any, ...]] | None:
    val = node.meta.get("val")
    if not isinstance(val, (list, tuple)) or not all(isinstance(v, torch.Tensor) for v in val):
        return None
    return [tuple(v.shape) for v in val]


def pieces_vary(node: torch.fx.Node, peers: Sequence[torch.fx.Node]) -> bool:
    mine = _pieces(node)
    return mine is not None and any(_pieces(p) != mine for p in peers)


def explicit_split(node: torch.fx.Node, peers: Sequence[torch.fx.Node], fitter: "LiteralFitter") -> Change:
    """``chunk(x, 2)`` / ``split(x, B)`` along a baked dim -> ``split_with_sizes(x, [B, B])``."""
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    all_pieces = [_pieces(n) for n in (node, *peers)]
    if any(p is None or len(p) != len(all_pieces[0]) for p in all_pieces):
        raise GeneralizationError(
            f"{call_text(node)} splits a dynamic dim into a number of pieces that follows the size",
            node=node.name, source=source_of(node),
            hint="split into a fixed number of pieces (torch.chunk(x, n)) or keep that dim static",
        )
    axis = dim % len(all_pieces[0][0])
    sizes = []
    for k in range(len(all_pieces[0])):
        values = [pieces[k][axis] for pieces in all_pieces]
        sizes.append(values[0] if all(v == values[0] for v in values) else fitter.symbolic(node, values))
    before = call_text(node)
    node.target = aten.split_with_sizes.default
    node.args = (node.args[0], sizes, dim)
    node.kwargs = {}
    return change(node, before, call_text(node), "split along a baked dim with explicit symbolic sizes")


class LiteralFitter:
    """Fits a literal's values at the fit traces and checks the expression at the check traces."""

    def __init__(self, names: Sequence[str], points: Sequence[dict[str, int]], checks: Sequence[dict[str, int]],
                 builder: SizeBuilder) -> None:
        self.names, self.points, self.checks, self.builder = list(names), list(points), list(checks), builder

    def symbolic(self, node: torch.fx.Node, values: Sequence[Any]) -> Any:
        """A node (or number) computing the literal at every size, checked at the check traces."""
        fit_values, check_values = list(values[: len(self.points)]), list(values[len(self.points):])
        if all(isinstance(v, int) for v in values):
            e = fit(self.names, self.points, fit_values)
            if e is not None and e.is_integral:
                self.check(node, e, check_values)
                return self.builder.expr(e)
        # A float that is c / size (a mean over the batch computed in Python).
        for name in self.names:
            prods = [v * p[name] for v, p in zip(values, self.points + self.checks)]
            if all(abs(x - prods[0]) <= 1e-9 * max(1.0, abs(prods[0])) for x in prods):
                return self.builder.inverse(float(prods[0]), name)
        e = fit(self.names, self.points, [Fraction(v).limit_denominator(10**6) for v in fit_values])
        if e is not None and e.is_integral:
            self.check(node, e, check_values)
            return self.builder.expr(e)
        raise self._error(node, values)

    def check(self, node: torch.fx.Node, e: Expr, values: Sequence[Any]) -> None:
        """``e`` must give the literal at every check trace, sizes it was not fitted on."""
        for point, value in zip(self.checks, values):
            if e.at(point) != Fraction(value).limit_denominator(10**6):
                raise self._error(node, None, f": {e} fits the traces, but at {point} the value is {value!r}, "
                                              f"not {e.at(point)}; it follows the size non-affinely")

    def _error(self, node: torch.fx.Node, values: Sequence[Any] | None, detail: str = "") -> GeneralizationError:
        shown = ""
        if values is not None:
            shown = " (" + ", ".join(f"{v!r} at {p}" for v, p in zip(values, self.points + self.checks)) + ")"
        return GeneralizationError(
            f"a literal in {node.name} follows the input size in a way fxtrt cannot express{shown}{detail}",
            node=node.name, source=source_of(node),
            hint="compute this value with tensor ops on x.shape (torch.export then keeps it symbolic), "
                 "or make that dim static",
        )


def generalize_constant(gm: torch.fx.GraphModule, node: torch.fx.Node, peers: Sequence[torch.fx.Node],
                        fitter: "LiteralFitter", changes: list[Change]) -> None:
    """A constant tensor whose length follows a size: rebuild it from a slice, or fail loudly."""
    value = _get_attr(gm, node.target) if _has_attr(gm, node.target) else None
    if not isinstance(value, torch.Tensor):
        return
    peer_values = [_get_attr(p.graph.owning_module, p.target) for p in peers]
    if all(isinstance(v, torch.Tensor) and v.shape == value.shape and torch.equal(v, value) for v in peer_values):
        return
    shapes = [tuple(value.shape)] + [tuple(v.shape) for v in peer_values]
    if len({len(s) for s in shapes}) != 1:
        raise GeneralizationError(f"constant {node.target} changes rank with the input size",
                                  node=node.name, source=_first_user_source(node))
    varying = [d for d in range(value.dim()) if len({s[d] for s in shapes}) > 1]
    if len(varying) == 1:
        first = value.narrow(varying[0], 0, 1)
        repeated = all(
            torch.equal(v, v.narrow(varying[0], 0, 1).expand_as(v)) and torch.equal(v.narrow(varying[0], 0, 1), first)
            for v in [value, *peer_values]
        )
        if repeated:
            d = varying[0]
            builder = fitter.builder
            size_expr = fit(fitter.names, fitter.points, [s[d] for s in shapes[: len(fitter.points)]])
            if size_expr is not None and size_expr.is_integral:
                fitter.check(node, size_expr, [s[d] for s in shapes[len(fitter.points):]])
                slice_name = f"{node.target.replace('.', '_')}_row"
                gm.register_buffer(slice_name, first.clone(), persistent=False)
                sizes = list(value.shape)
                sizes[d] = builder.expr(size_expr)
                row = builder.get_attr(slice_name)
                expanded = builder.call(aten.expand.default, (row, sizes))
                node.replace_all_uses_with(expanded)
                gm.graph.erase_node(node)
                expanded.meta = dict(node.meta)
                changes.append(change(node, f"constant {node.target} of shape {list(value.shape)}",
                                      f"expand({slice_name}, {fmt(sizes)})",
                                      "constant whose length follows the size rebuilt from one slice"))
                return
    raise GeneralizationError(
        f"constant tensor {node.target} (shape {list(value.shape)}) holds values that change with the input size",
        node=node.name, source=_first_user_source(node),
        hint="build it with tensor ops (torch.arange, expand) from x.shape instead of from a Python list",
    )


def _first_user_source(node: torch.fx.Node) -> str | None:
    return source_of(node) or next((source_of(u) for u in node.users if source_of(u)), None)


def _has_attr(gm: torch.nn.Module, target: Any) -> bool:
    if not isinstance(target, str):
        return False
    try:
        _get_attr(gm, target)
        return True
    except AttributeError:
        return False


def _get_attr(gm: torch.nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
