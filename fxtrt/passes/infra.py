"""The pass protocol: ``pass(gm, ctx) -> PassResult``, and the contract a pass declares.

A pass is a function (or a small callable class) that rewrites a GraphModule in place and says
what it changed. ``PassResult.changes`` feeds the report and the debug dumps; "modified" is just
``bool(changes)``. A pass never reads global state and never prints. What it learns beyond the
graph (the other traces it aligned) goes in its result, never into the frozen ``PassContext``.

``@graph_pass(...)`` writes down what a pass needs and provides (onnx_ir's requires / ensures,
torch.fx's pass constraints), so no order between passes rests on an unwritten agreement; the
manager (``fxtrt.passes.manager``) checks it::

    @graph_pass(requires=("generalize_batch",), reads_meta=("fxtrt_shapes",), finding="shape-chain")
    def canonicalize_flatten(gm, ctx): ...
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

import torch.fx

from fxtrt.errors import FxtrtError
from fxtrt.frontend.capture import CapturedGraph
from fxtrt.frontend.source import source_of
from fxtrt.settings import Settings


@dataclass(frozen=True)
class Change:
    """One rewrite: which node, where in the user's code, and what became what."""

    node: str
    before: str
    after: str
    source: str | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "source": self.source, "before": self.before,
                "after": self.after, "note": self.note}


@dataclass
class PassResult:
    """The rewritten graph, what changed, and (when the pass learned it) the captured graph as the
    pass leaves it, for the passes after it: the manager threads it into their context."""

    gm: torch.fx.GraphModule
    changes: list[Change] = field(default_factory=list)
    captured: CapturedGraph | None = None

    @property
    def modified(self) -> bool:
        return bool(self.changes)


@dataclass
class PassRecord:
    """What one pass did in one run, for the report and the debug dumps."""

    name: str
    changes: list[Change]
    seconds: float
    notes: list[str] = field(default_factory=list)  # subgraphs the pass left as captured, and why
    generalizes: bool = False  # the pass's declared contract: its changes are the trace-diff rewrites

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "modified": bool(self.changes), "seconds": round(self.seconds, 4),
               "changes": [c.to_dict() for c in self.changes]}
        if self.notes:
            out["notes"] = list(self.notes)
        return out


@dataclass(frozen=True)
class PassContext:
    """What passes may read: the frozen settings and what the frontend learned. Read-only: a pass
    that learns something returns it in its ``PassResult``."""

    settings: Settings
    captured: CapturedGraph
    # The subgraph of a higher-order op being rewritten (``true_graph_0``), None for the model's
    # graph: a subgraph's placeholders are its operands, not the model's inputs.
    subgraph: str | None = None

PassFn = Callable[[torch.fx.GraphModule, PassContext], PassResult]
# Every node, input or value a pass refuses to rewrite, as the errors compile raises (the first).
Precondition = Callable[[torch.fx.GraphModule, PassContext], Sequence[FxtrtError]]


@dataclass(frozen=True)
class PassContract:
    """What a pass needs and provides; the manager checks it before and after the pass runs.

    ``requires``: passes that must have run before it (by registry name).
    ``reads_meta`` / ``provides_meta``: ``node.meta`` keys it reads that an earlier pass writes,
    and the keys it writes for later passes.
    ``in_place``: True, it returns the GraphModule it was given; False, it leaves it untouched;
    None, not declared (a plain user function), not checked.
    ``always_runs``: the artifact would not serve its sizes without it (added when not listed).
    ``generalizes``: after it the graph serves sizes no trace used (the debug check then also
    runs at such a size; its changes are the report's trace-diff rewrites).
    ``precondition``: every reason it refuses the graph (onnx_ir's ``requires()``); compile
    raises the first, explain lists them all as ``precondition_finding``.
    ``finding``: the kind of hazard its changes and failures are in ``fxtrt explain``.
    """

    requires: tuple[str, ...] = ()
    reads_meta: tuple[str, ...] = ()
    provides_meta: tuple[str, ...] = ()
    in_place: bool | None = True
    always_runs: bool = False
    generalizes: bool = False
    precondition: Precondition | None = None
    precondition_finding: str | None = None
    finding: str | None = None


UNDECLARED = PassContract(in_place=None)
_F = TypeVar("_F", bound=Callable[..., Any])


def graph_pass(**contract: Any) -> Callable[[_F], _F]:
    """Declare a pass's contract (the fields of ``PassContract``); the function is left as it is,
    so it can still be called directly."""
    declared = PassContract(**contract)

    def mark(fn: _F) -> _F:
        fn.contract = declared  # type: ignore[attr-defined]
        return fn
    return mark


def contract_of(fn: Callable[..., Any]) -> PassContract:
    """The contract ``fn`` declared with ``@graph_pass``, or one that promises nothing."""
    declared = getattr(fn, "contract", None)
    return declared if isinstance(declared, PassContract) else UNDECLARED


def change(node: torch.fx.Node, before: str, after: str, note: str = "") -> Change:
    """A Change for ``node``, with the user's source line taken from its metadata.

    Weights and constants (get_attr) carry no stack trace; their first user's line stands in.
    """
    source = source_of(node) or next((s for u in node.users if (s := source_of(u))), None)
    return Change(node.name, before, after, source, note)


class NodeBuilder:
    """Adds ATen nodes where the graph is inserting, each with ``node``'s source location and its
    fake value (in ``mode``): what a pass that expands one node into several writes them with."""

    def __init__(self, graph: torch.fx.Graph, node: torch.fx.Node, mode: Any) -> None:
        self.graph, self.mode = graph, mode
        self.meta = {m: node.meta[m] for m in ("stack_trace", "nn_module_stack") if m in node.meta}

    def __call__(self, target: Any, *args: Any, **kwargs: Any) -> torch.fx.Node:
        new = self.graph.call_function(target, args, kwargs)
        new.meta.update(self.meta)
        fake_value(new, self.mode)
        return new


def tensor_value(node: object) -> torch.Tensor | None:
    """The fake tensor torch.export recorded for ``node`` (``meta["val"]``), if it is a tensor."""
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return val if isinstance(val, torch.Tensor) else None


def same_size(a: object, b: object) -> bool:
    """Whether two sizes are the same at every size: equal ints, or SymInts of one expression."""
    if isinstance(a, torch.SymInt) or isinstance(b, torch.SymInt):
        return isinstance(a, torch.SymInt) and isinstance(b, torch.SymInt) and a.node.expr == b.node.expr
    return a == b


def fake_value(node: torch.fx.Node, mode: Any = None) -> None:
    """Set ``node.meta["val"]`` to its op run on its arguments' fake values (in ``mode``, else the
    fake mode of a tensor argument), as torch.export would have: emission and later passes read
    it. Left unset where an argument has no value."""
    args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda a: a.meta.get("val"))
    if any(isinstance(a, torch.fx.Node) and a.meta.get("val") is None for a in node.all_input_nodes):
        return
    if mode is None:
        mode = next((v.fake_mode for v in torch.utils._pytree.tree_leaves((args, kwargs))
                     if isinstance(v, torch.Tensor) and hasattr(v, "fake_mode")), None)
    if mode is not None:
        with mode:
            node.meta["val"] = node.target(*args, **kwargs)


def fmt(value: Any) -> str:
    """Short, stable text for node arguments in change records."""
    if isinstance(value, torch.fx.Node):
        return value.meta.get("fxtrt_expr", value.name)
    if isinstance(value, (list, tuple)):
        inner = ", ".join(fmt(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    return repr(value)


def call_text(node: torch.fx.Node) -> str:
    target = getattr(node.target, "__name__", str(node.target))
    args = ", ".join([fmt(a) for a in node.args] + [f"{k}={fmt(v)}" for k, v in node.kwargs.items()])
    return f"{target}({args})"
