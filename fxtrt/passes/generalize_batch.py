"""Turn every literal that followed a baked-in dim into an expression of that dim.

The frontend captures symbolically first; only the dims the model bakes in (``int(x.size(0))``,
``x.data.size()``, ``B*heads`` in seq-first attention) are traced at concrete sizes, two per dim
at every corner plus one check trace, with every other dim still symbolic. Aligning the traces
node by node shows exactly which literals followed the size; two points fix ``a*B + c`` (every
corner fixes multilinear terms, ``a*B*T``), and the check trace, at sizes not used to fit,
must agree with every expression, so floor arithmetic or a product that only looks affine on
two points is a GeneralizationError at the user's line, never a guess.

Before (traced at B=2, B=3; checked at B=5):   view(conv, [2, -1])      view(conv, [3, -1])
After:                                          B = sym_size(x, 0);  view(conv, [B, -1])

``chunk`` / ``split`` along a baked dim become ``split_with_sizes`` with symbolic sizes, since
torch cannot prove how many pieces ``split(x, B)`` of ``2*B`` rows gives (RAFT's ``chunk``).
A trace whose structure differs between sizes (a Python loop over samples) is a
StructureError, and a value read from an input (``.item()``, ``.tolist()``) a
GeneralizationError, both at the user's line: fxtrt never hands back a graph silently baked to
one size.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Sequence

import torch
import torch.fx
import torch.utils._pytree as pytree

from fxtrt.errors import GeneralizationError, StructureError
from fxtrt.frontend.capture import Capture, CapturedGraph
from fxtrt.frontend.source import source_of
from fxtrt.graph import SCALAR_READS
from fxtrt.passes.affine import fit  # noqa: F401  (fit is part of this pass's API: tests fit directly)
from fxtrt.passes.align_traces import align_noop_slices
from fxtrt.passes.drop_shape_guards import guard_nodes
from fxtrt.passes.infra import Change, PassContext, PassResult, call_text, change, graph_pass
from fxtrt.passes.size_expressions import (SPLITS, LiteralFitter, SizeBuilder, explicit_split, generalize_constant,
                                           node_shape, operand_sites, pieces_vary)

aten = torch.ops.aten



def _leaf_key(value: Any, index: dict[torch.fx.Node, int]) -> Any:
    """What must agree across traces for two leaves to be 'the same position'."""
    if isinstance(value, torch.fx.Node):
        return ("node", index.get(value, value.name))
    if isinstance(value, bool) or value is None:
        return ("const", value)
    if isinstance(value, (int, float)):
        return ("num",)
    return ("const", repr(value))


def _ops(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    """The nodes that compute something: what two traces must agree on."""
    guards = guard_nodes(gm)
    return [n for n in gm.graph.nodes if n not in guards]


def _n_outputs(gm: torch.fx.GraphModule) -> int:
    (out,) = [n for n in gm.graph.nodes if n.op == "output"]
    return len(out.args[0]) if isinstance(out.args[0], (tuple, list)) else 1


def _structure_error(caps, i: int) -> GeneralizationError:
    base, other = caps[0], caps[i]
    a, b = _ops(base.gm), _ops(other.gm)
    k = next((j for j, (x, y) in enumerate(zip(a, b)) if x.op != y.op or x.target != y.target), min(len(a), len(b)))
    culprit = (b[k] if k < len(b) else a[k]) if k < max(len(a), len(b)) else a[-1]
    where = f"traced at {base.sizes} the graph has {len(a)} nodes, at {other.sizes} it has {len(b)}"
    detail = ""
    if k < len(a) and k < len(b):
        detail = f"; first difference: {call_text(a[k])} vs {call_text(b[k])}"
    n_a, n_b = _n_outputs(base.gm), _n_outputs(other.gm)
    if n_a != n_b:  # no graph serves that, not even one per batch size: the caller gets as many tensors
        return GeneralizationError(
            f"the number of outputs follows the {_dim_word(base.sizes, other.sizes)}: {n_a} tensors at "
            f"{base.sizes}, {n_b} at {other.sizes} (a loop that returns one tensor per sample, say)",
            node=culprit.name, source=source_of(culprit) or source_of(a[min(k, len(a) - 1)]),
            hint="return one batched tensor (torch.stack the per-sample results) instead of one tensor per sample")
    changed = tuple(d for d in base.sizes if base.sizes[d] != other.sizes.get(d))
    return StructureError(
        f"the graph's structure depends on the {_dim_word(base.sizes, other.sizes)} ({where}{detail})",
        node=culprit.name,
        source=source_of(culprit) or source_of(a[min(k, len(a) - 1)]),
        dims=changed,
        hint="replace Python loops over samples or per-sample lists with batched tensor ops; " + (
            "or compile a set of static-batch models instead" if "batch" in changed else
            f"or give {' and '.join(map(repr, changed))} one size, or a range over which the graph keeps one structure"),
    )


def _dim_word(a: dict[str, int], b: dict[str, int]) -> str:
    changed = [k for k in a if a[k] != b.get(k)]
    return " and ".join(f"size of '{c}'" if c != "batch" else "batch size" for c in changed) or "input size"


def value_dependent_nodes(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    """Nodes that turn tensor contents into Python numbers (``.item()``, ``.tolist()``)."""
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in SCALAR_READS]



def value_reads(gm: torch.fx.GraphModule, ctx: PassContext) -> list[GeneralizationError]:
    """The precondition: a value read from tensor contents makes the graph depend on values no
    size expression can stand for; one error per read (compile raises the first)."""
    if not ctx.settings.dims:
        return []
    return [GeneralizationError(
        "a size or value is read from tensor contents (.item() / .tolist()), "
        "so the graph depends on values fxtrt cannot make symbolic",
        node=node.name, source=source_of(node),
        hint="keep the computation in tensors (e.g. torch.where, masks) instead of Python numbers",
    ) for node in value_dependent_nodes(gm)]


@graph_pass(always_runs=True, generalizes=True,
            requires=("drop_shape_guards", "fold_constant_reads", "scalar_reads_as_tensors"),
            provides_meta=("fxtrt_shapes", "fxtrt_expr", "fxtrt_dim"),
            precondition=value_reads, precondition_finding="value-dependent", finding="baked-size")
def generalize_batch(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    """Replace size-following literals in ``gm`` (the base trace) with symbolic size expressions.

    It needs the export-time guards gone from ``gm`` (its trace would keep asserting the traced
    sizes) and reads of constants and scalar inputs folded first (else it refuses them), hence its
    ``requires``. The other traces it aligns with ``gm`` are copies, returned in ``captured``.
    """
    baked = ctx.captured.baked
    caps = ctx.captured.captures
    if not baked or len(caps) < 2:
        return PassResult(gm, [])
    others, learned = _aligned_traces(gm, ctx.captured)
    traces = [caps[0], *others]  # fitted on the captures, checked on the rest
    base_ops = _ops(gm)
    peer_ops = [_ops(c.gm) for c in others]
    for i, ops in enumerate(peer_ops, start=1):
        if len(ops) != len(base_ops) or any(x.op != y.op or x.target != y.target for x, y in zip(base_ops, ops)):
            raise _structure_error(traces, i)

    fit_points = [{n: c.sizes[n] for n in baked} for c in caps]
    check_points = [{n: c.sizes[n] for n in baked} for c in others[len(caps) - 1:]]
    sites = None if ctx.subgraph is None else operand_sites(traces, baked, fit_points + check_points)
    dims = [d for d in ctx.settings.dims if d.name in baked]
    fitter = LiteralFitter(baked, fit_points, check_points, SizeBuilder(gm, dims, sites))
    changes = _rewrite(gm, base_ops, peer_ops, len(caps), fitter)
    gm.graph.lint()
    gm.recompile()
    return PassResult(gm, changes, captured=learned)


def _aligned_traces(gm: torch.fx.GraphModule, captured: CapturedGraph) -> tuple[list[Capture], CapturedGraph | None]:
    """The other traces (captures, then checks) aligned node by node with ``gm``. Where aligning
    rewrites one, it rewrites a copy, so ``captured`` stays as the frontend left it; the captured
    graph holding the copies is returned (None when nothing needed aligning)."""
    others = captured.captures[1:] + captured.checks
    if not align_noop_slices([_ops(gm)] + [_ops(c.gm) for c in others], dry_run=True):
        return others, None
    others = [dataclasses.replace(c, gm=_graph_copy(c.gm)) for c in others]
    align_noop_slices([_ops(gm)] + [_ops(c.gm) for c in others])
    for g in [gm] + [c.gm for c in others]:
        g.recompile()
    n = len(captured.captures) - 1
    return others, dataclasses.replace(captured, captures=[captured.captures[0], *others[:n]], checks=others[n:])


def _graph_copy(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A GraphModule with a copy of ``gm``'s graph (node metadata kept) over the same weights."""
    return torch.fx.GraphModule(gm, copy.deepcopy(gm.graph))


def _rewrite(gm: torch.fx.GraphModule, base_ops: list[torch.fx.Node], peer_ops: list[list[torch.fx.Node]],
             n_caps: int, fitter: LiteralFitter) -> list[Change]:
    """Compare every node with its peers first, rewrite after: rewrites must not disturb the alignment."""
    base_index = {n: i for i, n in enumerate(base_ops)}
    peer_index = [{n: i for i, n in enumerate(ops)} for ops in peer_ops]
    rewrites: list[tuple[torch.fx.Node, list[Any], Any]] = []
    splits: list[tuple[torch.fx.Node, list[torch.fx.Node]]] = []
    constants: list[tuple[torch.fx.Node, list[torch.fx.Node]]] = []
    for j, node in enumerate(base_ops):
        peers = [ops[j] for ops in peer_ops]
        node.meta["fxtrt_shapes"] = [node_shape(n) for n in (node, *peers[: n_caps - 1])]
        if node.op == "get_attr":
            constants.append((node, peers))
        elif node.op == "call_function" and node.target in SPLITS and pieces_vary(node, peers):
            _peer_leaves(node, peers, base_index, peer_index)
            splits.append((node, peers))
        elif node.op == "call_function":
            planned = _symbolic_leaves(node, peers, base_index, peer_index, fitter)
            if planned is not None:
                rewrites.append((node, *planned))

    changes: list[Change] = []
    for node, new_leaves, spec in rewrites:
        before = call_text(node)
        node.args, node.kwargs = pytree.tree_unflatten(new_leaves, spec)
        changes.append(change(node, before, call_text(node), "size-following literal made symbolic"))
    for node, peers in splits:
        changes.append(explicit_split(node, peers, fitter))
    for node, peers in constants:
        generalize_constant(gm, node, peers, fitter, changes)
    return changes


def _peer_leaves(node: torch.fx.Node, peers: Sequence[torch.fx.Node], base_index: dict[torch.fx.Node, int],
                 peer_index: Sequence[dict[torch.fx.Node, int]]) -> tuple[list[Any], Any, list[list[Any]]]:
    """``node``'s argument leaves and spec, and each peer's leaves, which must line up with them."""
    leaves, spec = pytree.tree_flatten((node.args, node.kwargs))
    keys = [_leaf_key(x, base_index) for x in leaves]
    peer_leaves = []
    for p, index in zip(peers, peer_index):
        pl, pspec = pytree.tree_flatten((p.args, p.kwargs))
        if pspec != spec or [_leaf_key(x, index) for x in pl] != keys:
            raise GeneralizationError(
                f"node {node.name} takes differently shaped arguments at different sizes: "
                f"{call_text(node)} vs {call_text(p)}",
                node=node.name, source=source_of(node),
                hint="the model builds an argument list whose length follows the batch",
            )
        peer_leaves.append(pl)
    return leaves, spec, peer_leaves


def _symbolic_leaves(node: torch.fx.Node, peers: Sequence[torch.fx.Node], base_index: dict[torch.fx.Node, int],
                     peer_index: Sequence[dict[torch.fx.Node, int]],
                     fitter: LiteralFitter) -> tuple[list[Any], Any] | None:
    """``node``'s argument leaves with each number that differs between the traces fitted to a
    size expression, and their spec; None when no number differs."""
    leaves, spec, peer_leaves = _peer_leaves(node, peers, base_index, peer_index)
    new_leaves = list(leaves)
    touched = False
    for k, value in enumerate(leaves):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        values = [value] + [pl[k] for pl in peer_leaves]
        if all(v == value for v in values):
            continue
        new_leaves[k] = fitter.symbolic(node, values)
        touched = True
    return (new_leaves, spec) if touched else None
