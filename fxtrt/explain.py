"""``fxtrt explain``: the torchpipe guide's "why conversion fails" list, for the user's model.

Capture and analyse, emit nothing. Every entry names the user's ``file:line``, shows that line,
says what the hazard is and what compile() will do about it (or why it cannot).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import linecache
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from fxtrt.errors import ConfigError, FxtrtError, GeneralizationError, StructureError
from fxtrt.frontend.bind import bind, resolve_dims
from fxtrt.frontend.capture import capture
from fxtrt.frontend.source import SourceLocation, location_of
from fxtrt.passes import PassContext
from fxtrt.passes.canonicalize_flatten import RESHAPES, canonicalize_flatten
from fxtrt.passes.drop_shape_guards import drop_shape_guards
from fxtrt.passes.fix_dtypes import fix_dtypes
from fxtrt.passes.fold_constant_reads import fold_constant_reads
from fxtrt.passes.generalize_batch import rewrite_size_literals, value_dependent_nodes
from fxtrt.passes.scalar_reads_as_tensors import scalar_reads_as_tensors
from fxtrt.settings import make_settings

KINDS = {
    "baked-size": "a dynamic size is used as a Python number: a static export bakes it in",
    "shape-chain": "a reshape built from x.size(): ONNX gets Shape→Gather→Unsqueeze→Concat→Reshape",
    "bool": "a bool mask used in arithmetic",
    "float64": "float64, which TensorRT does not have",
    "value-dependent": "a size read from tensor values (.item() / .tolist())",
    "structure": "the graph's structure depends on the batch size",
    "constant-read": "a value read from a constant of the model (.item() on a buffer)",
    "range-limit": "the model itself works only on part of the declared range",
}


@dataclass
class Entry:
    kind: str
    source: str | None
    code: str
    what: str
    action: str
    nodes: list[str] = field(default_factory=list)
    fixable: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "code": self.code, "what": self.what,
                "action": self.action, "nodes": self.nodes, "fixable": self.fixable}


@dataclass
class Explanation:
    model: str
    dims: list[dict[str, Any]]
    entries: list[Entry]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "dims": self.dims, "entries": [e.to_dict() for e in self.entries]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        dims = ", ".join(f"{d['name']} {d['min']}..{d['max']}" for d in self.dims) or "none (static)"
        out = [f"fxtrt explain: {self.model} (dynamic: {dims})"]
        for d in self.dims:
            if "how" in d:
                lo, hi = d["traced_range"]
                out.append(f"  {d['name']}: {d['how']} (traced over {lo}..{hi})"
                           + (f": {d['why']}" if d.get("why") else ""))
        if not self.entries:
            out.append("  nothing to fix: no baked sizes, shape chains, dtype hazards or value-dependent shapes")
        for e in self.entries:
            count = f" x{len(e.nodes)}" if len(e.nodes) > 1 else ""
            out.append(f"\n{e.source or '<unknown>'}  [{e.kind}{count}]")
            if e.code:
                out.append(f"    {e.code}")
            out.append(f"  {e.what}")
            out.append(f"  {'→' if e.fixable else '✗'} {e.action}")
        fixable = sum(e.fixable for e in self.entries)
        out.append(f"\n{len(self.entries)} finding(s): {fixable} fixed by fxtrt, {len(self.entries) - fixable} need a change in the model")
        return "\n".join(out)


def _location(node: torch.fx.Node | None, source: str | None = None) -> tuple[str | None, str]:
    loc: SourceLocation | None = location_of(node) if node is not None else None
    if loc is None and source:
        file, _, line = source.rpartition(":")
        if line.isdigit():
            loc = SourceLocation(file, int(line), linecache.getline(file, int(line)).strip())
    return (str(loc), loc.code) if loc else (source, "")


class _Collector:
    def __init__(self) -> None:
        self.entries: dict[tuple[str, str | None, str], Entry] = {}

    def add(self, kind: str, node: torch.fx.Node | None, what: str, action: str, *, fixable: bool = True,
            source: str | None = None) -> None:
        src, code = _location(node, source)
        key = (kind, src, fixable)
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = Entry(kind, src, code, what, action, fixable=fixable)
        elif action != entry.action and not entry.action.endswith("more like it)"):
            entry.action += " (and more like it)"
        if node is not None:
            entry.nodes.append(node.name)


def explain(
    model: torch.nn.Module,
    example_inputs: Any = None,
    *,
    kwargs: Mapping[str, Any] | None = None,
    batch: tuple[int, int, int] | None = (1, 8, 32),
    batch_dims: Sequence[int | None] | Mapping[str, int | None] | int | None = None,
    dynamic: Mapping[int | str, Mapping[int, Any]] | None = None,
    dims: Mapping[str, tuple[int, ...]] | None = None,
) -> Explanation:
    """Find every export hazard in ``model`` without emitting anything (inputs as for compile)."""
    name = type(model).__name__
    model, inputs, binding = bind(model, example_inputs, kwargs)
    batch_dims, dynamic = resolve_dims(binding, inputs, batch, batch_dims, dynamic, dims)
    settings = make_settings(model, inputs, batch=batch, batch_dims=batch_dims, dynamic=dynamic, out_dir=None,
                             opset=17, target="onnx", precision="fp32", passes=None, verify=False,
                             atol=1e-4, rtol=1e-3, input_names=binding.names)
    found = _Collector()
    dims = [d.to_dict() for d in settings.dims]
    try:
        captured = capture(model, inputs, settings)
    except GeneralizationError as exc:
        found.add("value-dependent", None, KINDS["value-dependent"],
                  f"cannot: {exc.message}; {exc.hint or ''}".strip(), fixable=False, source=exc.source)
        return Explanation(name, dims, list(found.entries.values()))
    except ConfigError as exc:  # a limit the model sets on a declared range
        found.add("range-limit", None, KINDS["range-limit"], f"cannot: {exc.message}; {exc.hint or ''}".strip(),
                  fixable=False, source=exc.source)
        return Explanation(name, dims, list(found.entries.values()))
    settings = dataclasses.replace(settings, dims=captured.declared)
    dims = [{**d.to_dict(), **captured.dims[d.name].to_dict()} for d in settings.dims]

    gm = copy.deepcopy(captured.base.gm)
    captured.captures[0].gm = gm
    ctx = PassContext(settings, captured)
    drop_shape_guards(gm, ctx)
    for c in fold_constant_reads(gm, ctx).changes:
        found.add("constant-read", None, KINDS["constant-read"], f"fold {c.before} to {c.after}", source=c.source)
    scalar_reads_as_tensors(gm, ctx)  # reads that only scale tensors are served; the rest are listed below

    if settings.dims:
        for node in value_dependent_nodes(gm):
            found.add("value-dependent", node, KINDS["value-dependent"],
                      "cannot: the value is only known at run time; compute with tensor ops (masks, torch.where) "
                      "instead of Python numbers", fixable=False)
    try:
        result = rewrite_size_literals(gm, ctx)
    except GeneralizationError as exc:
        if isinstance(exc, StructureError):
            batch_only = all(d.is_batch for d in settings.dims)
            action = (f"cannot make one dynamic model ({exc.message}); compile() serves a set of static-batch "
                      "models (buckets) instead" if batch_only else f"cannot: {exc.message}. {exc.hint or ''}")
            found.add("structure", None, KINDS["structure"], action.strip(), fixable=batch_only, source=exc.source)
        else:
            node = next((n for n in gm.graph.nodes if n.name == exc.node), None)
            found.add("baked-size", node, KINDS["baked-size"], f"cannot: {exc.message}. {exc.hint or ''}".strip(),
                      fixable=False, source=exc.source)
    else:
        for c in result.changes:
            node = next((n for n in gm.graph.nodes if n.name == c.node), None)
            found.add("baked-size", node, KINDS["baked-size"], f"rewrite {c.before} to {c.after}")
        flat = canonicalize_flatten(gm, ctx)
        flattened = {c.node for c in flat.changes}
        for c in flat.changes:
            node = next((n for n in gm.graph.nodes if n.name == c.node), None)
            found.add("shape-chain", node, KINDS["shape-chain"], f"rewrite to {c.after}: a Reshape with a constant shape")
        for node in gm.graph.nodes:
            if (node.op == "call_function" and node.target in RESHAPES and node.name not in flattened
                    and any(isinstance(a, torch.fx.Node) for a in node.args[1])):
                found.add("shape-chain", node, KINDS["shape-chain"],
                          "cannot: more than one dim of this reshape is dynamic, so no single -1 can stand in; "
                          "the Shape ops stay (TensorRT handles them, with some cost)", fixable=False)
    for c in fix_dtypes(gm, ctx).changes:
        kind = "bool" if "bool" in c.before else "float64"
        node = next((n for n in gm.graph.nodes if n.name == c.node), None)
        src = c.source if node is None or location_of(node) is None else None
        found.add(kind, node, KINDS[kind], f"rewrite {c.before} to {c.after}", source=src)
    entries = sorted(found.entries.values(), key=lambda e: (e.source or "~", e.kind))
    return Explanation(name, dims, entries)


__all__ = ["Entry", "Explanation", "explain", "FxtrtError"]
