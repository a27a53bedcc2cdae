"""The pass protocol: ``pass(gm, ctx) -> PassResult``.

A pass is a function (or a small callable class) that rewrites a GraphModule in place and says
what it changed. ``PassResult.changes`` feeds the report and the debug dumps; "modified" is just
``bool(changes)``. A pass never reads global state and never prints.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch.fx

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
    gm: torch.fx.GraphModule
    changes: list[Change] = field(default_factory=list)

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

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "modified": bool(self.changes), "seconds": round(self.seconds, 4),
               "changes": [c.to_dict() for c in self.changes]}
        if self.notes:
            out["notes"] = list(self.notes)
        return out


@dataclass
class PassContext:
    """What passes may read: the frozen settings and what the frontend learned."""

    settings: Settings
    captured: CapturedGraph
    # The subgraph of a higher-order op being rewritten (``true_graph_0``), None for the model's
    # graph: a subgraph's placeholders are its operands, not the model's inputs.
    subgraph: str | None = None


class GraphPass(Protocol):
    __name__: str

    def __call__(self, gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult: ...


def change(node: torch.fx.Node, before: str, after: str, note: str = "") -> Change:
    """A Change for ``node``, with the user's source line taken from its metadata.

    Weights and constants (get_attr) carry no stack trace; their first user's line stands in.
    """
    source = source_of(node) or next((s for u in node.users if (s := source_of(u))), None)
    return Change(node.name, before, after, source, note)


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


PassFn = Callable[[torch.fx.GraphModule, PassContext], PassResult]
