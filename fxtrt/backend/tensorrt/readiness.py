"""Whether TensorRT's ONNX parser takes each node of a model, release by release, without TensorRT.

Like Torch-TensorRT's ``dryrun``, for an ONNX file: every node (and every node of an ``If`` /
``Loop`` / ``Scan`` body) is looked up in the operator table of each TensorRT release
(:mod:`.operator_tables`, generated from onnx-tensorrt): is the op supported, for the types of the
node's tensors (DOUBLE / INT64 count as the type the table's notes say the parser casts them to),
and does it keep the table's restrictions (:mod:`.restrictions`). Each gap names the node, the
user's ``file:line`` (torch.onnx's provenance on the node), the upstream restriction it breaks and,
where one exists, the rewrite that would make it acceptable.

What this cannot know: restrictions no check recognises are listed as *unchecked*, and the parser
itself may still refuse a node for reasons its table does not state (where TensorRT is
importable, ``supports_model_v2`` is the parser's own word).

Example::

    record = readiness_record(check_readiness(Path("out/model.onnx")))
    record["tensorrt"]["10"]["coverage"]        # 100.0
"""
from __future__ import annotations

import logging
import re
from collections import ChainMap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, MutableMapping

import onnx
import onnx.defs

from fxtrt.backend.shape_inference import infer_shapes
from fxtrt.backend.tensorrt.operator_tables import load_tables
from fxtrt.backend.tensorrt.restrictions import Finding, NodeView, check_restrictions
from fxtrt.errors import EngineError
from fxtrt.frontend.source import onnx_node_source

log = logging.getLogger(__name__)

RELEASES = ("10", "11")
# Ops whose output shape depends on input values (ONNX semantics): TensorRT needs an output allocator.
DATA_DEPENDENT = frozenset({"NonZero", "NonMaxSuppression", "Unique", "Compress"})
_T = onnx.TensorProto
_TABLE_TYPE = {_T.FLOAT: "FP32", _T.FLOAT16: "FP16", _T.BFLOAT16: "BF16", _T.DOUBLE: "DOUBLE", _T.INT32: "INT32",
               _T.INT64: "INT64", _T.INT8: "INT8", _T.UINT8: "UINT8", _T.BOOL: "BOOL", _T.INT4: "INT4",
               _T.FLOAT8E4M3FN: "FP8", _T.FLOAT8E5M2: "FP8", _T.FLOAT4E2M1: "FP4", _T.INT16: "INT16",
               _T.UINT16: "UINT16", _T.UINT32: "UINT32", _T.UINT64: "UINT64", _T.STRING: "STRING"}
_NOTE_NAMES = {"FLOAT": "FP32", "FLOAT32": "FP32", "FLOAT16": "FP16"}
_CAST_NOTE = re.compile(r"cast (?:down )?(\w+) (?:down )?to (\w+)", re.I)
_BITWISE_AS_LOGICAL = {"BitwiseAnd": "And", "BitwiseOr": "Or", "BitwiseXor": "Xor", "BitwiseNot": "Not"}


@dataclass(frozen=True)
class Gap:
    """One node the parser of one release would not take."""

    node: str
    op: str
    reason: str
    source: str | None
    restriction: str
    rewrite: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"node": self.node, "op": self.op, "reason": self.reason, "source": self.source,
               "restriction": self.restriction}
        if self.rewrite:
            out["rewrite"] = self.rewrite
        return out


@dataclass
class Readiness:
    """One release's verdict on a model."""

    release: str
    table: Mapping[str, Any]
    nodes: int = 0
    unsupported: list[Gap] = field(default_factory=list)
    unchecked: dict[str, list[str]] = field(default_factory=dict)
    data_dependent: list[dict[str, Any]] = field(default_factory=list)
    casts: dict[str, int] = field(default_factory=dict)

    @property
    def supported(self) -> int:
        return self.nodes - len({g.node for g in self.unsupported})

    @property
    def coverage(self) -> float:
        return round(100.0 * self.supported / self.nodes, 2) if self.nodes else 100.0

    def to_dict(self) -> dict[str, Any]:
        t = self.table
        return {"checked": True, "nodes": self.nodes, "supported": self.supported, "coverage": self.coverage,
                "unsupported": [g.to_dict() for g in self.unsupported],
                "unchecked_restrictions": self.unchecked, "data_dependent": self.data_dependent,
                "casts": self.casts,
                "table": {"repo": t["repo"], "ref": t["ref"], "commit": t["commit"], "opset": t["opset"],
                          "source_sha256": t["source_sha256"]}}


@dataclass
class _Scope:
    constants: MutableMapping[str, onnx.TensorProto]
    types: MutableMapping[str, int]
    ranks: MutableMapping[str, int | None]

    def child(self, graph: onnx.GraphProto) -> "_Scope":
        scope = _Scope(ChainMap({}, self.constants), ChainMap({}, self.types), ChainMap({}, self.ranks))
        scope.add(graph)
        return scope

    def add(self, graph: onnx.GraphProto) -> None:
        for vi in [*graph.input, *graph.output, *graph.value_info]:
            tt = vi.type.tensor_type
            if tt.elem_type:
                self.types[vi.name] = tt.elem_type
            self.ranks[vi.name] = len(tt.shape.dim) if tt.HasField("shape") else None
        for init in graph.initializer:
            self.constants[init.name], self.types[init.name] = init, init.data_type
            self.ranks[init.name] = len(init.dims)
        for node in graph.node:
            value = next((a.t for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)
            if node.op_type == "Constant" and value is not None and node.output:
                self.constants[node.output[0]], self.types[node.output[0]] = value, value.data_type
                self.ranks[node.output[0]] = len(value.dims)


def _walk(graph: onnx.GraphProto, scope: _Scope, prefix: str = "", source: str | None = None
          ) -> Iterator[tuple[str, onnx.NodeProto, _Scope, str | None]]:
    """(qualified name, node, scope, user line) of every node, bodies of If/Loop/Scan included."""
    for i, node in enumerate(graph.node):
        name = prefix + (node.name or f"{node.op_type}_{i}")
        where = onnx_node_source(node) or source
        yield name, node, scope, where
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else
                        list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []):
                yield from _walk(sub, scope.child(sub), f"{name}/{attr.name}/", where)


def _load(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    try:
        return infer_shapes(model)
    except Exception as exc:  # types stay as declared; checks that need one skip the node
        log.debug("shape inference failed before the readiness check: %s", exc)
        return model


def check_readiness(model: onnx.ModelProto | str | Path, releases: tuple[str, ...] = RELEASES,
                    tables: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Readiness | None]:
    """Per release key, the verdict on every node; None for a release with no shipped table."""
    proto = _load(model)
    tables = load_tables() if tables is None else tables
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 17)
    io = frozenset(v.name for v in [*proto.graph.input, *proto.graph.output])
    functions = {(f.domain, f.name) for f in proto.functions}
    root = _Scope({}, {}, {})
    root.add(proto.graph)
    out: dict[str, Readiness | None] = {}
    for key in releases:
        table = tables.get(key)
        if table is None:
            out[key] = None
            continue
        result = Readiness(key, table)
        lo, hi = table["opset"]
        if not lo <= opset <= hi:
            result.unsupported.append(Gap("(model)", "opset", f"opset {opset} is outside {lo}..{hi}", None,
                                          f"TensorRT {table['named_release']} supports opset {lo} to {hi}",
                                          rewrite=f"export at an opset in {lo}..{hi}"))
        for name, node, scope, source in _walk(proto.graph, root):
            if (node.domain, node.op_type) in functions:
                continue  # a local function: the parser inlines it, its body is not walked here
            result.nodes += 1
            view = NodeView(node, opset, scope.constants, scope.types, scope.ranks, io)
            _check_node(result, name, view, source)
        out[key] = result
    return out


def _check_node(result: Readiness, name: str, view: NodeView, source: str | None) -> None:
    node, table = view.node, result.table
    row = table["operators"].get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if row is None:
        where = f"custom domain {node.domain!r}: needs a TensorRT plugin" if node.domain not in ("", "ai.onnx") \
            else f"not in the operator table of onnx-tensorrt {table['ref']}"
        result.unsupported.append(Gap(name, node.op_type, where, source, "operator table: no row"))
        return
    if not row["supported"]:
        result.unsupported.append(Gap(name, node.op_type, f"{node.op_type} is not supported by the parser", source,
                                      f"operator table: {node.op_type} | N {row['restrictions']}".strip(),
                                      _unsupported_op_hint(view)))
        return
    findings = _type_findings(view, row, table, result.casts)
    more, unchecked = check_restrictions(view, row["restrictions"])
    for f in findings + more:
        result.unsupported.append(Gap(name, node.op_type, f.reason, source, f.restriction, f.rewrite))
    if unchecked:
        known = result.unchecked.setdefault(node.op_type, [])
        known += [s for s in unchecked if s not in known]
    if node.op_type in DATA_DEPENDENT:
        result.data_dependent.append({"node": name, "op": node.op_type, "source": source})


def _unsupported_op_hint(view: NodeView) -> str | None:
    logical = _BITWISE_AS_LOGICAL.get(view.node.op_type)
    if logical and all(view.types.get(i) == _T.BOOL for i in view.node.input if i):
        return f"on bool tensors {view.node.op_type} is {logical} (torch.logical_{logical.lower()})"
    return None


def _typed_values(view: NodeView) -> Iterator[tuple[str, str]]:
    """(role, value) of the node's tensors whose type the table's "Supported Types" speaks of: those
    typed like input 0, and any whose ONNX type constraint allows more than one type."""
    schema, node = view.schema, view.node
    if schema is None:
        yield from (("input", v) for v in node.input if v)
        return
    allowed = {c.type_param_str: len(c.allowed_type_strs) for c in schema.type_constraints}
    first = schema.inputs[0].type_str if schema.inputs else None
    for role, formals, values in (("input", schema.inputs, node.input), ("output", schema.outputs, node.output)):
        for i, value in enumerate(values):
            if not value or not formals:
                continue
            formal = formals[min(i, len(formals) - 1)]
            if formal.type_str == first or allowed.get(formal.type_str, 1) > 1 or (role == "output" and first is None):
                yield role, value


def _type_findings(view: NodeView, row: Mapping[str, Any], table: Mapping[str, Any],
                   casts: dict[str, int]) -> list[Finding]:
    """Tensors of a type the op's row does not list (after the casts the table's notes promise)."""
    if not row["types"]:
        return []
    cast = {a.upper(): _NOTE_NAMES.get(b.upper(), b.upper()) for note in table["notes"]
            for a, b in _CAST_NOTE.findall(note)}
    io_only = {t for note in table["notes"] for t in re.findall(r"(\w+) is only supported as network input or output",
                                                                  note)}
    out = []
    for role, value in _typed_values(view):
        name = _TABLE_TYPE.get(view.types.get(value, 0))
        if name is None:
            continue
        if name in io_only and value not in view.io:
            out.append(Finding(f"{role} {value} is {name} inside the network", f"{name} only as network input or output"))
            continue
        effective = cast.get(name, name)
        if effective in row["types"]:
            if effective != name:
                casts[f"{name}->{effective}"] = casts.get(f"{name}->{effective}", 0) + 1
            continue
        out.append(Finding(f"{role} {value} is {name}; {view.node.op_type} takes {', '.join(row['types'])}",
                           f"Supported Types: {', '.join(row['types'])}", _type_hint(name, row["types"])))
        break
    return out


def _type_hint(name: str, types: list[str]) -> str | None:
    if name == "INT64" and "INT32" in types:
        return "an INT64 shape or index chain can be INT32: cast it to int32 where it starts"
    if name == "DOUBLE" and "FP32" in types:
        return "compute in float32 (fxtrt's fix_dtypes pass does this for float64)"
    if name == "BOOL" and ("INT32" in types or "FP32" in types):
        return "cast the bool to int32 or float around this op (fxtrt's fix_dtypes does this for bool arithmetic)"
    if name in ("INT32", "INT64") and "FP32" in types:
        return "compute in float32 and cast back (exact for integers below 2**24)"
    return None


def readiness_record(results: Mapping[str, Readiness | None]) -> dict[str, Any]:
    """``report.stages["engines"]["readiness"]``: ``{"tensorrt": {"10": {...}, "11": {...}}}``."""
    return {"tensorrt": {key: r.to_dict() if r is not None else
                         {"checked": False, "reason": f"no TensorRT {key}.x operator table is shipped (regenerate "
                                                      "trt_operators.json from onnx-tensorrt's release branch)"}
                         for key, r in results.items()}}


def readiness_lines(record: Mapping[str, Any]) -> list[str]:
    """The dryrun view: per release the coverage, then each unsupported op with its count, reason and lines."""
    out = []
    for key, r in record.get("tensorrt", {}).items():
        if not r.get("checked"):
            out.append(f"  TensorRT {key}: not checked: {r.get('reason')}")
            continue
        t = r["table"]
        out.append(f"  TensorRT {key}: {r['supported']}/{r['nodes']} nodes supported ({r['coverage']:.1f}%) "
                   f"[onnx-tensorrt {t['ref']} @ {t['commit'][:12]}]")
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for g in r["unsupported"]:
            groups.setdefault((g["op"], g["restriction"]), []).append(g)
        for (op, _), gaps in groups.items():
            lines = sorted({g["source"] or "unknown line" for g in gaps})
            out.append(f"    {op} x{len(gaps)}: {gaps[0]['reason']}")
            out.append(f"      breaks: {gaps[0]['restriction']}")
            out.append(f"      at: {', '.join(lines[:6])}" + (f" (+{len(lines) - 6} more)" if len(lines) > 6 else ""))
            if gaps[0].get("rewrite"):
                out.append(f"      rewrite: {gaps[0]['rewrite']}")
        for entry in r.get("data_dependent", []):
            out.append(f"    note: {entry['op']} {entry['node']} has a data-dependent output shape "
                       f"(TensorRT allocates it at run time) [{entry['source'] or 'unknown line'}]")
        for op, sentences in r.get("unchecked_restrictions", {}).items():
            out.append(f"    not checked statically, {op}: {' '.join(sentences)}")
    return out


def incomplete(record: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The checked releases whose coverage is below 100% (or with a model-level gap)."""
    return {k: r for k, r in record.get("tensorrt", {}).items() if r.get("checked") and r["unsupported"]}


def unsupported_error(record: Mapping[str, Any]) -> EngineError | None:
    """The ``EngineError`` ``strict=True`` raises: every unsupported node, per release, or None."""
    bad = incomplete(record)
    if not bad:
        return None
    lines = []
    for key, r in bad.items():
        lines.append(f"TensorRT {key}: {r['coverage']:.1f}% of {r['nodes']} nodes supported; unsupported:")
        lines += [f"  {g['node']} ({g['op']}) at {g['source'] or 'unknown line'}: {g['reason']} "
                  f"[{g['restriction']}]" for g in r["unsupported"]]
    first = next(iter(bad.values()))["unsupported"][0]
    return EngineError("TensorRT's ONNX parser would not take every node:\n" + "\n".join(lines),
                       node=first["node"], source=first["source"],
                       hint=first.get("rewrite") or "change the model at those lines, or compile with strict=False "
                                                     "to write the engine plan anyway")
