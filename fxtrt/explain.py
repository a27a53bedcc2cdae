"""``fxtrt explain``: the torchpipe guide's "why conversion fails" list, for the user's model.

Capture and analyse, emit nothing. Every entry names the user's ``file:line``, shows that line,
says what the hazard is and what compile() will do about it (or why it cannot).
"""
from __future__ import annotations

import dataclasses
import json
import linecache
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from fxtrt.backend.tensorrt.readiness import check_readiness, readiness_lines, readiness_record
from fxtrt.errors import ConfigError, FxtrtError, GeneralizationError, StructureError
from fxtrt.frontend.bind import bind, resolve_dims
from fxtrt.frontend.capture import capture
from fxtrt.frontend.source import SourceLocation, location_of
from fxtrt.passes import PassContext, PassEvent, PassManager, resolve
from fxtrt.passes.canonicalize_flatten import RESHAPES
from fxtrt.passes.infra import Change
from fxtrt.settings import DEFAULT_BATCH, Settings, make_settings

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
    readiness: dict[str, Any] | None = None  # target="tensorrt": the ONNX parser's verdict per release
    passes: list[str] = field(default_factory=list)  # the pipeline compile runs, in order, as explain ran it

    def to_dict(self) -> dict[str, Any]:
        out = {"model": self.model, "dims": self.dims, "entries": [e.to_dict() for e in self.entries]}
        if self.passes:
            out["passes"] = list(self.passes)
        if self.readiness is not None:
            out["readiness"] = self.readiness
        return out

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
        if self.passes:
            out.append("  passes: " + " → ".join(self.passes))
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
        if self.readiness is not None:
            out.append("\nTensorRT ONNX parser readiness (operator tables, checked without TensorRT):")
            out += readiness_lines(self.readiness)
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
    batch: tuple[int, int, int] | None = DEFAULT_BATCH,
    batch_dims: Sequence[int | None] | Mapping[str, int | None] | int | None = None,
    dynamic: Mapping[int | str, Mapping[int, Any]] | None = None,
    dims: Mapping[str, tuple[int, ...]] | None = None,
    target: str = Settings.target,
    opset: int = Settings.opset,
    passes: Sequence[Any] | None = None,
) -> Explanation:
    """Find every export hazard in ``model`` without emitting anything (inputs as for compile).

    ``target="tensorrt"`` also emits the ONNX model as compile does (unverified, into a temporary
    directory) and checks every node against TensorRT 10/11's ONNX parser tables, dryrun-style.
    ``passes`` as for compile: explain runs the same pipeline, through the same pass manager.
    """
    name = type(model).__name__
    if target == "tensorrt":
        found = explain(model, example_inputs, kwargs=kwargs, batch=batch, batch_dims=batch_dims, dynamic=dynamic,
                        dims=dims, opset=opset, passes=passes)
        found.readiness = _parser_readiness(model, example_inputs, kwargs=kwargs, batch=batch, batch_dims=batch_dims,
                                            dynamic=dynamic, dims=dims, opset=opset, passes=passes)
        return found
    model, inputs, binding = bind(model, example_inputs, kwargs)
    batch_dims, dynamic = resolve_dims(binding, inputs, batch, batch_dims, dynamic, dims)
    settings = make_settings(model, inputs, batch=batch, batch_dims=batch_dims, dynamic=dynamic, out_dir=None,
                             opset=opset, target=target, precision="fp32", passes=passes, verify=False,
                             atol=Settings.atol, rtol=Settings.rtol, input_names=binding.names)
    pipeline = resolve(settings.passes)
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

    observer = _Findings(found, all(d.is_batch for d in settings.dims))
    manager = PassManager(pipeline, observers=[observer], keep_going=(GeneralizationError,))
    run = manager.run(captured.base.gm, PassContext(settings, captured))  # a capture of explain's own
    entries = sorted(found.entries.values(), key=lambda e: (e.source or "~", e.kind))
    return Explanation(name, dims, entries, passes=run.ran)


_UNKNOWN_AT_RUN_TIME = ("cannot: the value is only known at run time; compute with tensor ops (masks, torch.where) "
                        "instead of Python numbers")
# What a change is, in words, by the finding kind its pass declares (``PassContract.finding``).
_REWRITES = {
    "constant-read": lambda c: f"fold {c.before} to {c.after}",
    "baked-size": lambda c: f"rewrite {c.before} to {c.after}",
    "shape-chain": lambda c: f"rewrite to {c.after}: a Reshape with a constant shape",
    "dtype": lambda c: f"rewrite {c.before} to {c.after}",
}


class _Findings:
    """A ``PassManager`` observer: each pass's refusals, failure and changes as entries, by the
    finding kinds the pass declares; a pass that declares none is run and not listed."""

    def __init__(self, found: _Collector, batch_only: bool) -> None:
        self.found = found
        self.batch_only = batch_only

    def __call__(self, event: PassEvent) -> None:
        gm, contract = event.gm, event.contract
        for exc in event.refusals:
            kind, node = contract.precondition_finding or "value-dependent", _node(gm, exc.node)
            self.found.add(kind, node, KINDS[kind], _UNKNOWN_AT_RUN_TIME, fixable=False,
                           source=exc.source if node is None else None)
        if event.error is not None:
            self._failure(event.error, gm, contract.finding or "baked-size")
        elif contract.finding is not None and event.result is not None:
            for c in event.result.changes:
                self._change(contract.finding, c, gm)
            if contract.finding == "shape-chain":
                self._unflattened(gm, {c.node for c in event.result.changes})

    def _change(self, finding: str, c: Change, gm: torch.fx.GraphModule) -> None:
        kind = ("bool" if "bool" in c.before else "float64") if finding == "dtype" else finding
        node = _node(gm, c.node)
        source = c.source if node is None or location_of(node) is None else None
        self.found.add(kind, node, KINDS[kind], _REWRITES[finding](c), source=source)

    def _failure(self, exc: FxtrtError, gm: torch.fx.GraphModule, kind: str) -> None:
        if isinstance(exc, StructureError):
            action = (f"cannot make one dynamic model ({exc.message}); compile() serves a set of static-batch "
                      "models (buckets) instead" if self.batch_only else f"cannot: {exc.message}. {exc.hint or ''}")
            self.found.add("structure", None, KINDS["structure"], action.strip(), fixable=self.batch_only,
                           source=exc.source)
        else:
            self.found.add(kind, _node(gm, exc.node), KINDS[kind], f"cannot: {exc.message}. {exc.hint or ''}".strip(),
                           fixable=False, source=exc.source)

    def _unflattened(self, gm: torch.fx.GraphModule, flattened: set[str]) -> None:
        """Reshapes the shape-chain pass could not give a constant shape."""
        for node in gm.graph.nodes:
            if (node.op == "call_function" and node.target in RESHAPES and node.name not in flattened
                    and any(isinstance(a, torch.fx.Node) for a in node.args[1])):
                self.found.add("shape-chain", node, KINDS["shape-chain"],
                               "cannot: more than one dim of this reshape is dynamic, so no single -1 can stand in; "
                               "the Shape ops stay (TensorRT handles them, with some cost)", fixable=False)


def _node(gm: torch.fx.GraphModule, name: str | None) -> torch.fx.Node | None:
    return next((n for n in gm.graph.nodes if n.name == name), None) if name else None


def _parser_readiness(model: torch.nn.Module, example_inputs: Any, **options: Any) -> dict[str, Any]:
    """The ONNX model compile would write (not verified: only its nodes matter here), checked
    against the parser tables; the temporary directory goes with the compiled model."""
    from fxtrt.api import compile as fxtrt_compile

    compiled = fxtrt_compile(model, example_inputs, verify=False, **options)
    return readiness_record(check_readiness(compiled.onnx_path))


__all__ = ["Entry", "Explanation", "explain"]
