"""fp16 by ONNX types, with automatic repair of the nodes fp16 breaks.

TensorRT 11 (and 10 with strongly typed networks) computes in the types the ONNX graph
declares, so reduced precision is a graph rewrite: float tensors become float16, except the
nodes kept in float32, with ``Cast`` nodes at the boundaries.

Why not ``onnxconverter_common.float16.convert_float_to_float16``: with onnx 1.23 and opset 18
(1.16.0, checked) it produces models onnxruntime rejects or that silently differ:

* a ``Cast(to=FLOAT)`` (``mask.float()``) keeps producing float32 while its output is declared
  float16, so the model fails to load;
* an initializer read by both a blocked and an unblocked node stays float32 for both, a type
  error in the unblocked one;
* a blocked node that produces a graph output, with ``keep_io_types=True``, makes that output
  float16 (the opposite of what was asked, and its values are rounded);
* constants are clamped to +-1e4 by default (an attention mask of -1e9 becomes -1e4).

So the conversion here is our own, written as a plan (which node computes in which
precision) and a materialisation of that plan. Numerically sensitive ops stay float32 by
default (:data:`DEFAULT_FP32_OPS`), as do nodes with a constant operand fp16 cannot hold
(an epsilon below fp16's smallest normal number, a value beyond 65504) and slots whose ONNX
schema has no float16 type.

Verifying fp16 on onnxruntime's CPU provider needs care: ORT runs most fp16 nodes through
float32 kernels and removes the casts between them, so an fp16 overflow in an intermediate
tensor never shows (``x*x/x`` at x=1000 gives 1000, not inf). :func:`repair_fp16` therefore
checks an *emulation* of the plan: the same graph computed in float32 with every value the
real model stores in fp16 rounded through an explicit ``Cast(fp16) -> Cast(fp32)`` pair,
which ORT keeps. That is fp16 storage with float32 arithmetic inside each node, which is what
TensorRT does for the elementwise ops where fp16 overflows; matmul/conv accumulation order is
not modelled. The real fp16 model must then also pass on ORT.

Example::

    result = repair_fp16(model, feeds=[{"x": x1}, {"x": x8}], reference=[{"y": y1}, {"y": y8}])
    onnx.save(result.model, "model_fp16.onnx")
    kept = [(k.name, k.op_type, k.reason) for k in result.kept]   # nodes that stay float32, and why
"""
from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from typing import Any, Collection, Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnx.defs
import onnx.shape_inference
from onnx import TensorProto, helper, numpy_helper

from fxtrt.errors import ConfigError, PrecisionError

log = logging.getLogger(__name__)

FP16_MAX = 65504.0
FP16_MIN_NORMAL = 2.0**-14  # 6.1e-5; smaller constants lose precision or flush to zero

# Kept in float32 unless the caller passes another set. Reductions and normalisations
# accumulate (a sum of 1e3 fp16 values overflows long before the mean does), Softmax/Exp/Pow
# overflow fp16's range of 65504, Sqrt/Reciprocal/Log sit in norm denominators. ReduceMax and
# ReduceMin are not here: they select a value, so they can't overflow or lose precision.
DEFAULT_FP32_OPS: frozenset[str] = frozenset({
    "LayerNormalization", "GroupNormalization", "InstanceNormalization", "LpNormalization",
    "MeanVarianceNormalization", "Softmax", "LogSoftmax",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
    "ReduceProd", "CumSum",
    "Pow", "Exp", "Log", "Sqrt", "Reciprocal",
})

# Ops that only move data: they take the precision of their first float input, so that a
# Reshape between two float32 nodes doesn't round through fp16.
_FOLLOW_OPS = frozenset({
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Expand", "Tile", "Slice", "Split",
    "Concat", "Gather", "GatherElements", "GatherND", "Pad", "DepthToSpace", "SpaceToDepth", "Where",
})
# Ops that read only the shape of their input: no cast for them.
_SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})

FP16, FP32 = "fp16", "fp32"
_ELEM = {FP16: TensorProto.FLOAT16, FP32: TensorProto.FLOAT}


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class KeptNode:
    """A node that stays float32: its ONNX name, the values it produces, and why.

    ``rule`` is "user" (keep_fp32), "op_type" (DEFAULT_FP32_OPS), "constant" (an operand fp16
    can't hold), "schema" (no float16 in the op's ONNX types) or "diverged" (found by repair in
    ``round``). Round 0 is the first conversion.
    """

    name: str
    op_type: str
    outputs: tuple[str, ...]
    reason: str
    round: int
    rule: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op_type": self.op_type, "outputs": list(self.outputs), "reason": self.reason,
                "round": self.round, "rule": self.rule}


@dataclass(frozen=True)
class OutputFigures:
    """Worst error of one output over all feeds: max |a-b|, max |a-b|/|ref|, non-finite count."""

    name: str
    max_abs: float
    max_rel: float
    nonfinite: int
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "max_abs": self.max_abs, "max_rel": self.max_rel, "nonfinite": self.nonfinite,
                "passed": self.passed}


@dataclass(frozen=True)
class RoundFigures:
    """One conversion round: errors of the fp16 emulation (and of the real fp16 model on ORT,
    once the emulation passes), where divergence started, and which nodes it then keeps."""

    round: int
    fp32_nodes: int
    outputs: tuple[OutputFigures, ...]
    ort_outputs: tuple[OutputFigures, ...]
    first_divergence: tuple[str, ...]
    added: tuple[str, ...]
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "fp32_nodes": self.fp32_nodes, "outputs": [o.to_dict() for o in self.outputs],
                "ort_outputs": [o.to_dict() for o in self.ort_outputs],
                "first_divergence": list(self.first_divergence), "added": list(self.added), "passed": self.passed}


@dataclass(frozen=True)
class Fp16Result:
    """The fp16 model, the nodes kept in float32, and the figures of every round."""

    model: onnx.ModelProto = field(repr=False)
    kept: tuple[KeptNode, ...]
    rounds: tuple[RoundFigures, ...]
    passed: bool
    atol: float
    rtol: float

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "atol": self.atol, "rtol": self.rtol,
                "kept": [k.to_dict() for k in self.kept], "rounds": [r.to_dict() for r in self.rounds]}


# --------------------------------------------------------------------------- the fp32 graph, analysed once


class _Graph:
    """Static facts about the float32 model: types, producers, constants, rules per node."""

    def __init__(self, model: onnx.ModelProto, fp32_ops: Collection[str]) -> None:
        self.model = model
        g = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        for i, node in enumerate(g.node):
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                raise PrecisionError(
                    f"fp16 conversion does not support control flow: node {node.name or i} ({node.op_type}) has a subgraph",
                    node=node.name or None, hint="keep this model in fp32")
        inferred = onnx.shape_inference.infer_shapes(model)
        self.types: dict[str, int] = {}
        for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                self.types[vi.name] = vi.type.tensor_type.elem_type
        for init in g.initializer:
            self.types[init.name] = init.data_type
        self.inputs = [vi.name for vi in g.input]
        self.outputs = [vi.name for vi in g.output]
        input_set = set(self.inputs)

        # Float constants (initializers and Constant nodes) are materialised per precision offline.
        self.consts: dict[str, np.ndarray] = {}
        for init in g.initializer:
            if init.data_type == TensorProto.FLOAT and init.name not in input_set:
                self.consts[init.name] = numpy_helper.to_array(init)
        self.const_nodes: set[int] = set()
        for i, node in enumerate(g.node):
            value = _constant_value(node)
            if value is not None and value.dtype == np.float32:
                self.consts[node.output[0]] = value
                self.const_nodes.add(i)
                self.types[node.output[0]] = TensorProto.FLOAT

        self.nodes = list(g.node)
        self.names = [n.name or f"<{n.op_type} #{i}>" for i, n in enumerate(self.nodes)]
        self.by_name = {name: i for i, name in enumerate(self.names)}
        self.producer = {v: i for i, n in enumerate(self.nodes) for v in n.output if v}
        self.readers: dict[str, list[tuple[int, int]]] = {}
        for i, n in enumerate(self.nodes):
            for j, v in enumerate(n.input):
                if v:
                    self.readers.setdefault(v, []).append((i, j))
        self.compared = [v for i, n in enumerate(self.nodes) if i not in self.const_nodes
                         for v in n.output if v and v in self.types]
        # Per node: float32 slots required by the ONNX schema, and the rule that keeps it fp32.
        self.fixed_in: list[set[int]] = []
        self.fixed_out: list[set[int]] = []
        self.rules: list[tuple[str, str] | None] = []
        for i, node in enumerate(self.nodes):
            fin, fout, rule = self._static_rule(i, node, fp32_ops)
            self.fixed_in.append(fin)
            self.fixed_out.append(fout)
            self.rules.append(rule)

    def is_float(self, v: str) -> bool:
        return bool(v) and self.types.get(v) == TensorProto.FLOAT

    def touches_float(self, i: int) -> bool:
        n = self.nodes[i]
        return any(self.is_float(v) for v in (*n.input, *n.output))

    def _static_rule(self, i: int, node: onnx.NodeProto, fp32_ops: Collection[str]):
        fin: set[int] = set()
        fout: set[int] = set()
        if i in self.const_nodes or not self.touches_float(i):
            return fin, fout, None
        float_in = [j for j, v in enumerate(node.input) if self.is_float(v)]
        float_out = [j for j, v in enumerate(node.output) if self.is_float(v)]
        if node.domain not in ("", "ai.onnx"):
            return set(float_in), set(float_out), ("schema", f"custom op {node.domain}::{node.op_type}: fp16 typing unknown")
        try:
            schema = onnx.defs.get_schema(node.op_type, self.opset, "")
        except onnx.defs.SchemaError:
            return set(float_in), set(float_out), ("schema", f"no ONNX schema for {node.op_type} at opset {self.opset}")
        if any(a.name == "dtype" for a in node.attribute):
            return set(float_in), set(float_out), ("schema", f"{node.op_type} sets its output type by attribute")
        allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}

        def no_fp16(params, j: int) -> bool:
            if not params:
                return True
            p = params[min(j, len(params) - 1)]
            return "tensor(float16)" not in allowed.get(p.type_str, {p.type_str})

        fin = {j for j in float_in if no_fp16(schema.inputs, j)}
        fout = {j for j in float_out if no_fp16(schema.outputs, j)}
        if node.op_type in fp32_ops:
            return fin, fout, ("op_type", f"{node.op_type} is numerically sensitive (in fp32_ops)")
        if fin == set(float_in) and fout == set(float_out):
            return fin, fout, ("schema", f"ONNX {node.op_type} has no float16 type for its float operands")
        for j in float_in:
            v = node.input[j]
            if v in self.consts:
                why = _unrepresentable(self.consts[v])
                if why:
                    return fin, fout, ("constant", f"constant operand {v!r} {why}")
        if node.op_type == "ConstantOfShape":
            value = next((numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"), None)
            why = _unrepresentable(value) if value is not None and value.dtype == np.float32 else None
            if why:
                return fin, fout, ("constant", f"fill value {why}")
        return fin, fout, None

    def check_names(self, names: Iterable[str]) -> None:
        unknown = [n for n in names if n not in self.by_name]
        if unknown:
            close = {n: difflib.get_close_matches(n, list(self.by_name), n=3) for n in unknown}
            raise ConfigError(
                f"keep_fp32 names nodes the model doesn't have: {unknown}",
                hint="; ".join(f"{n!r}: did you mean {c}?" for n, c in close.items() if c) or
                     "use ONNX node names, e.g. 'node_layer_norm'",
            )

    # ------------------------------------------------------------------ planning

    def plan(self, keep: Mapping[str, KeptNode]) -> tuple[list[str], tuple[KeptNode, ...]]:
        """Precision per node (in graph order) and the nodes deliberately kept fp32."""
        kinds: list[str] = []
        native: dict[str, str] = {}
        kept: list[KeptNode] = []
        for i, node in enumerate(self.nodes):
            name = self.names[i]
            rule = self.rules[i]
            kind = FP16
            if name in keep and self.touches_float(i):
                k = keep[name]
                kept.append(k)
                kind = FP32
            elif rule is not None:
                kept.append(KeptNode(name, node.op_type, self._outs(i), rule[1], 0, rule[0]))
                kind = FP32
            elif node.op_type in _FOLLOW_OPS:
                first = next((v for v in node.input if self.is_float(v)), None)
                if first is not None and native.get(first) == FP32:
                    kind = FP32
            kinds.append(kind)
            for j, v in enumerate(node.output):
                if self.is_float(v):
                    native[v] = FP32 if j in self.fixed_out[i] else kind
            for v in node.input:
                if self.is_float(v) and v not in native and v not in self.consts:
                    native[v] = FP32  # graph input (the keep_io_types case; close enough for following)
        return kinds, tuple(kept)

    def _outs(self, i: int) -> tuple[str, ...]:
        return tuple(v for v in self.nodes[i].output if v)

    # ------------------------------------------------------------------ materialising

    def materialize(self, kinds: Sequence[str], *, emulate: bool, keep_io_types: bool) -> onnx.ModelProto:
        return _Emitter(self, kinds, emulate=emulate, keep_io_types=keep_io_types).model()


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        return None
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
    return None


def _unrepresentable(arr: np.ndarray) -> str | None:
    """Why fp16 can't hold this constant: a finite value beyond 65504, or a scalar so small it
    is subnormal or zero in fp16 (typically a norm epsilon). Small entries inside large weight
    tensors are normal and not flagged."""
    finite = np.abs(arr[np.isfinite(arr)])
    if finite.size and finite.max() > FP16_MAX:
        return f"holds {float(finite.max()):g}, beyond fp16's largest value {FP16_MAX:g}"
    if arr.size == 1 and finite.size and 0 < float(finite.max()) < FP16_MIN_NORMAL:
        return f"= {float(arr.reshape(-1)[0]):g}, below fp16's smallest normal value {FP16_MIN_NORMAL:.3g}"
    return None


class _Emitter:
    """Builds one model from a plan: the real fp16 model, or its float32 emulation.

    Every original float value ``v`` can exist in two precisions; ``self.names[(v, kind)]``
    says under which name. A node reads each float input in the precision of its slot, and
    conversions are created on first use, right before their first reader, so the node order
    stays topological. Values keep their original names in their native precision, so the
    same name can be compared across the float32 model, the emulation and the fp16 model.

    In the emulation an "fp16" value is a float32 tensor whose values were rounded to fp16 by
    a Cast pair; reading it as fp32 needs no conversion (the rounded values are exact).
    """

    def __init__(self, graph: _Graph, kinds: Sequence[str], *, emulate: bool, keep_io_types: bool) -> None:
        self.g = graph
        self.kinds = kinds
        self.emulate = emulate
        self.keep_io = keep_io_types
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.names: dict[tuple[str, str], str] = {}
        self.value_kinds: dict[str, str] = {}  # name in the new model -> precision, for value_info
        m = graph.model.graph
        self.used = {v for n in m.node for v in (*n.input, *n.output)} | {n.name for n in m.node}
        self.used |= {vi.name for vi in (*m.input, *m.output, *m.value_info)} | {t.name for t in m.initializer}
        self.out_kind = {v: (FP32 if keep_io_types else FP16) for v in graph.outputs if graph.is_float(v)}

    # -- names and conversions

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    def _cast_nodes(self, src: str, kind: str, dst: str) -> None:
        if not self.emulate:
            self.nodes.append(helper.make_node("Cast", [src], [dst], name=self.fresh(f"{dst}__cast"), to=_ELEM[kind]))
        elif kind == FP16:
            mid = self.fresh(f"{dst}__as_fp16")
            self.nodes.append(helper.make_node("Cast", [src], [mid], name=self.fresh(f"{mid}__cast"),
                                               to=TensorProto.FLOAT16))
            self.nodes.append(helper.make_node("Cast", [mid], [dst], name=self.fresh(f"{dst}__cast"),
                                               to=TensorProto.FLOAT))
        else:
            self.nodes.append(helper.make_node("Identity", [src], [dst], name=self.fresh(f"{dst}__identity")))
        self.value_kinds[dst] = kind

    def get(self, v: str, kind: str) -> str:
        if (v, kind) in self.names:
            return self.names[(v, kind)]
        other = self.names[(v, FP16 if kind == FP32 else FP32)]
        if self.emulate and kind == FP32:
            self.names[(v, kind)] = other
            return other
        dst = self.fresh(f"{v}__{kind}")
        self._cast_nodes(other, kind, dst)
        self.names[(v, kind)] = dst
        return dst

    def native_name(self, v: str, kind: str) -> str:
        """``v`` itself, unless ``v`` is a graph output wanted in the other precision."""
        want = self.out_kind.get(v)
        if want is None or want == kind or (self.emulate and kind == FP16):
            return v
        return self.fresh(f"{v}__{kind}")

    # -- the model

    def model(self) -> onnx.ModelProto:
        g, src = self.g, self.g.model.graph
        needs = self._const_needs()
        for v, arr in g.consts.items():
            self._emit_const(v, arr, needs.get(v, set()))
        new_inputs = []
        for vi in src.input:
            vi = _copy(vi)
            if g.is_float(vi.name):
                if self.keep_io:
                    self.names[(vi.name, FP32)] = vi.name
                    self.value_kinds[vi.name] = FP32
                elif self.emulate:
                    rounded = self.fresh(f"{vi.name}__fp16")
                    self._cast_nodes(vi.name, FP16, rounded)
                    self.names[(vi.name, FP16)] = rounded
                else:
                    vi.type.tensor_type.elem_type = TensorProto.FLOAT16
                    self.names[(vi.name, FP16)] = vi.name
                    self.value_kinds[vi.name] = FP16
            new_inputs.append(vi)

        for i, node in enumerate(g.nodes):
            if i not in g.const_nodes:
                self._emit_node(i, node)

        for v, want in self.out_kind.items():
            if self.emulate and want == FP32:
                self.get(v, want)  # an alias of the rounded value, no node
            have = self.names.get((v, want))
            if have == v:
                continue
            if have is None:
                self._cast_nodes(self.names[(v, FP16 if want == FP32 else FP32)], want, v)
            else:
                self.nodes.append(helper.make_node("Identity", [have], [v], name=self.fresh(f"{v}__identity")))
            self.names[(v, want)] = v
            self.value_kinds[v] = want

        outputs = []
        for vi in src.output:
            vi = _copy(vi)
            if vi.name in self.out_kind:
                vi.type.tensor_type.elem_type = _ELEM[FP32 if self.emulate else self.out_kind[vi.name]]
            outputs.append(vi)
        graph = helper.make_graph(
            self.nodes, src.name, new_inputs, outputs,
            initializer=[t for t in src.initializer if t.name not in g.consts] + self.inits,
            value_info=self._value_info(),
            doc_string=src.doc_string,
        )
        graph.sparse_initializer.extend(src.sparse_initializer)
        out = onnx.ModelProto()
        out.CopyFrom(g.model)
        out.graph.CopyFrom(graph)
        return out

    def _const_needs(self) -> dict[str, set[str]]:
        g = self.g
        needs: dict[str, set[str]] = {}
        for i, node in enumerate(g.nodes):
            if i in g.const_nodes:
                continue
            for j, v in enumerate(node.input):
                if v in g.consts:
                    needs.setdefault(v, set()).add(self._slot_kind(i, j))
        for v, want in self.out_kind.items():
            if v in g.consts:
                needs.setdefault(v, set()).add(want)
        return needs

    def _emit_const(self, v: str, arr: np.ndarray, kinds: set[str]) -> None:
        for kind in (FP32, FP16):
            if kind not in kinds:
                continue
            name = v if (kind == FP32 or FP32 not in kinds) else self.fresh(f"{v}__fp16")
            if kind == FP16:
                with np.errstate(over="ignore"):
                    half = arr.astype(np.float16)
                data = half.astype(np.float32) if self.emulate else half
            else:
                data = arr
            self.inits.append(numpy_helper.from_array(np.asarray(data), name))
            self.names[(v, kind)] = name
            self.value_kinds[name] = FP32 if self.emulate else kind

    def _slot_kind(self, i: int, j: int) -> str:
        return FP32 if j in self.g.fixed_in[i] else self.kinds[i]

    def _emit_node(self, i: int, node: onnx.NodeProto) -> None:
        g = self.g
        new = onnx.NodeProto()
        new.CopyFrom(node)
        kind = self.kinds[i]
        for j, v in enumerate(node.input):
            if not g.is_float(v):
                continue
            if node.op_type in _SHAPE_ONLY_OPS:
                new.input[j] = self.names.get((v, FP32)) or self.names[(v, FP16)]
            else:
                new.input[j] = self.get(v, self._slot_kind(i, j))
        rounding: list[tuple[str, str]] = []
        for j, v in enumerate(node.output):
            if not g.is_float(v):
                continue
            out_kind = FP32 if j in g.fixed_out[i] else kind
            name = self.native_name(v, out_kind)
            if self.emulate and out_kind == FP16:
                raw = self.fresh(f"{v}__fp32_raw")
                new.output[j] = raw
                rounding.append((raw, name))
            else:
                new.output[j] = name
                self.value_kinds[name] = out_kind
            self.names[(v, out_kind)] = name
        if not self.emulate and kind == FP16:
            _retarget_float_attributes(new)
        self.nodes.append(new)
        for raw, name in rounding:
            self._cast_nodes(raw, FP16, name)

    def _value_info(self) -> list[onnx.ValueInfoProto]:
        src = self.g.model.graph
        io = {vi.name for vi in (*src.input, *src.output)}
        shapes = {vi.name: vi for vi in src.value_info}
        out = [_copy(vi) for vi in src.value_info if not self.g.is_float(vi.name)]
        for (v, _), name in sorted(self.names.items()):
            if name in io or v not in shapes or name not in self.value_kinds:
                continue
            vi = _copy(shapes[v])
            vi.name = name
            vi.type.tensor_type.elem_type = _ELEM[FP32 if self.emulate else self.value_kinds[name]]
            out.append(vi)
        seen: set[str] = set()
        return [vi for vi in out if not (vi.name in seen or seen.add(vi.name))]


def _copy(vi: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(vi)
    return out


def _retarget_float_attributes(node: onnx.NodeProto) -> None:
    """An fp16 node whose float output type comes from an attribute must say float16."""
    for a in node.attribute:
        if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
            a.i = TensorProto.FLOAT16
        elif node.op_type == "ConstantOfShape" and a.name == "value" and a.t.data_type == TensorProto.FLOAT:
            with np.errstate(over="ignore"):
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))


# --------------------------------------------------------------------------- public: conversion


def convert_to_fp16(
    model: onnx.ModelProto,
    *,
    keep_fp32: Collection[str] = (),
    keep_io_types: bool = True,
    fp32_ops: Collection[str] = DEFAULT_FP32_OPS,
) -> onnx.ModelProto:
    """The model with float tensors in float16, except the nodes kept in float32.

    Kept: ops in ``fp32_ops``, node names in ``keep_fp32``, nodes with a constant operand fp16
    can't hold, and slots the ONNX schema allows only float32 for. With ``keep_io_types`` the
    model's float inputs and outputs stay float32. Pass ``fp32_ops=()`` for a plain cast.
    The input model is not modified.
    """
    graph = _Graph(model, fp32_ops)
    graph.check_names(keep_fp32)
    keep = {n: KeptNode(n, graph.nodes[graph.by_name[n]].op_type, graph._outs(graph.by_name[n]),
                        "kept by the caller (keep_fp32)", 0, "user") for n in keep_fp32}
    kinds, kept = graph.plan(keep)
    return _finish(graph, kinds, kept, keep_io_types)


def _finish(graph: _Graph, kinds: Sequence[str], kept: Sequence[KeptNode], keep_io_types: bool) -> onnx.ModelProto:
    out = graph.materialize(kinds, emulate=False, keep_io_types=keep_io_types)
    del out.metadata_props[:]
    out.metadata_props.extend(p for p in graph.model.metadata_props if not p.key.startswith("fxtrt.fp"))
    out.metadata_props.add(key="fxtrt.precision", value="fp16")
    out.metadata_props.add(key="fxtrt.fp32_nodes", value=",".join(k.name for k in kept))
    _check_types(graph.model, out)
    return out


def _check_types(original: onnx.ModelProto, converted: onnx.ModelProto) -> None:
    """Postcondition: the converted model is valid ONNX whose types line up everywhere."""
    try:
        onnx.checker.check_model(converted)
        onnx.shape_inference.infer_shapes(converted, check_type=True, strict_mode=True)
    except Exception as exc:
        try:
            onnx.shape_inference.infer_shapes(original, check_type=True, strict_mode=True)
        except Exception:
            log.debug("strict shape inference fails on the fp32 model too; not holding it against fp16: %s", exc)
            return
        raise PrecisionError(f"fp16 conversion produced an invalid model (a bug in fxtrt): {exc}") from exc


# --------------------------------------------------------------------------- public: repair


def repair_fp16(
    fp32_model: onnx.ModelProto,
    feeds: Sequence[Mapping[str, np.ndarray]],
    reference: Sequence[Mapping[str, np.ndarray]] | None = None,
    *,
    atol: float = 1e-2,
    rtol: float = 1e-2,
    max_rounds: int = 10,
    keep_fp32: Collection[str] = (),
    keep_io_types: bool = True,
    fp32_ops: Collection[str] = DEFAULT_FP32_OPS,
    raise_on_failure: bool = True,
) -> Fp16Result:
    """Convert to fp16 and keep adding float32 nodes until every output matches the reference.

    Each round checks ``|a - b| <= atol + rtol * |ref|`` elementwise on every output for every
    feed (``reference``: the float32 PyTorch outputs, one dict per feed; default: the float32
    ONNX model's own). On failure it compares every intermediate value with the float32 model,
    in graph order, and keeps in float32 the nodes where divergence starts: a node whose output
    diverges although its inputs don't. If that node is already float32, the rounding of its
    inputs is what it amplifies, so the fp16 nodes feeding it are kept instead. Stops when the
    outputs pass, or raises PrecisionError (with the figures and the kept list, also as
    ``error.result``) when nothing is left to keep or after ``max_rounds`` repairs.
    """
    if not feeds:
        raise ConfigError("repair_fp16 needs at least one feed")
    if max_rounds < 0:
        raise ConfigError(f"max_rounds must be >= 0, got {max_rounds}")
    graph = _Graph(fp32_model, fp32_ops)
    graph.check_names(keep_fp32)
    feeds = [dict(f) for f in feeds]
    outputs = list(graph.outputs)

    fp32_values = [_run(_expose(fp32_model, graph.compared, graph.types), f) for f in feeds]
    if reference is None:
        reference = [{o: vals[o] for o in outputs} for vals in fp32_values]
    else:
        if len(reference) != len(feeds):
            raise ConfigError(f"got {len(feeds)} feeds but {len(reference)} references")
        own = _figures(outputs, [{o: v[o] for o in outputs} for v in fp32_values], reference, atol, rtol)
        if not all(f.passed for f in own):
            raise PrecisionError(
                "the float32 ONNX model itself does not match the reference, so fp16 can't either:\n"
                + _format_figures(own), rows=[f.to_dict() for f in own],
                hint="verify the fp32 export first; this is not a precision problem")

    keep: dict[str, KeptNode] = {
        n: KeptNode(n, graph.nodes[graph.by_name[n]].op_type, graph._outs(graph.by_name[n]),
                    "kept by the caller (keep_fp32)", 0, "user")
        for n in keep_fp32
    }
    rounds: list[RoundFigures] = []
    for r in range(max_rounds + 1):
        kinds, kept = graph.plan(keep)
        fp32_count = sum(k == FP32 for i, k in enumerate(kinds) if graph.touches_float(i))
        emulated = graph.materialize(kinds, emulate=True, keep_io_types=keep_io_types)
        values = [_run(_expose(emulated, graph.compared, graph.types), f) for f in feeds]
        figs = _figures(outputs, values, reference, atol, rtol)
        ort_figs: tuple[OutputFigures, ...] = ()
        passed = all(f.passed for f in figs)
        model = None
        if passed:
            model = _finish(graph, kinds, kept, keep_io_types)
            real_values = [_run(_expose(model, graph.compared, _real_types(model, graph)), f) for f in feeds]
            ort_figs = _figures(outputs, real_values, reference, atol, rtol)
            passed = all(f.passed for f in ort_figs)
            if not passed:
                values = real_values  # look for divergence where it shows
        if passed:
            rounds.append(RoundFigures(r, fp32_count, figs, ort_figs, (), (), True))
            log.info("fp16: passed in round %d with %d node(s) kept in fp32", r, len(kept))
            return Fp16Result(model, kept, tuple(rounds), True, atol, rtol)  # type: ignore[arg-type]

        first, new = _divergence(graph, kinds, fp32_values, values, atol, rtol, r + 1)
        new = [k for k in new if k.name not in keep]
        rounds.append(RoundFigures(r, fp32_count, figs, ort_figs, tuple(first), tuple(k.name for k in new), False))
        log.info("fp16 round %d: diverges first at %s; keeping %s in fp32", r, first, [k.name for k in new])
        if not new or r == max_rounds:
            why = ("nothing is left to keep in fp32" if not new else f"still failing after {max_rounds} repair round(s)")
            result = Fp16Result(model or _finish(graph, kinds, kept, keep_io_types), kept, tuple(rounds), False,
                                atol, rtol)
            if not raise_on_failure:
                return result
            raise _precision_error(result, why)
        for k in new:
            keep[k.name] = k
    raise AssertionError("unreachable")


def _divergence(
    graph: _Graph,
    kinds: Sequence[str],
    ref: Sequence[Mapping[str, np.ndarray]],
    got: Sequence[Mapping[str, np.ndarray]],
    atol: float,
    rtol: float,
    next_round: int,
) -> tuple[list[str], list[KeptNode]]:
    """Values where divergence starts, and the nodes to keep in fp32 for them.

    A graph output diverges when it fails the elementwise check; an intermediate value when
    its error exceeds ``atol + rtol * max|ref|`` over the whole tensor (elementwise, the
    plain rounding of a large tensor's near-zero entries, amplified by a later Mul, would
    count as divergence and keep harmless nodes), or when it overflows. Divergence starts at
    a node whose output diverges while its inputs don't, or whose output overflows while
    its inputs are finite.
    """
    outputs = set(graph.outputs)
    bad: dict[str, tuple[float, float, int]] = {}
    for r, g in zip(ref, got):
        for v in graph.compared:
            if v not in r or v not in g:
                continue
            max_abs, max_rel, nonfinite, ok = _compare(r[v], g[v], atol, rtol, per_tensor=v not in outputs)
            if not ok:
                prev = bad.get(v, (0.0, 0.0, 0))
                bad[v] = (max(prev[0], max_abs), max(prev[1], max_rel), max(prev[2], nonfinite))
    overflow = {v for v, (_, _, nonfinite) in bad.items() if nonfinite}

    first: list[str] = []
    new: dict[str, KeptNode] = {}
    # A value beyond fp16's range is inf in fp16 wherever it is stored: its producer and every
    # node reading it in fp16 must be fp32, all in this round.
    for v in graph.compared:
        peak = max((_finite_peak(r[v]) for r in ref if v in r), default=0.0)
        if peak <= FP16_MAX or not graph.is_float(v):
            continue
        sites = [graph.producer[v]] + [i for i, j in graph.readers.get(v, ())
                                        if graph.nodes[i].op_type not in _SHAPE_ONLY_OPS]
        for i in sites:
            if kinds[i] == FP16:
                name = graph.names[i]
                role = "produces" if i == graph.producer[v] else "reads"
                new.setdefault(name, KeptNode(
                    name, graph.nodes[i].op_type, graph._outs(i),
                    f"{role} {v!r}, whose values reach {peak:g}, beyond fp16's largest value {FP16_MAX:g}",
                    next_round, "diverged"))
    for i, node in enumerate(graph.nodes):
        outs = [v for v in node.output if v in bad]
        ins = [u for u in node.input if u]
        if not outs:
            continue
        starts = not any(u in bad for u in ins)
        overflows = [v for v in outs if v in overflow and not any(u in overflow for u in ins)]
        if not (starts or overflows):
            continue
        v = overflows[0] if overflows else outs[0]
        max_abs, max_rel, nonfinite = bad[v]
        what = (f"{nonfinite} value(s) overflow to inf/nan in fp16" if nonfinite else
                f"max |err| {max_abs:.3g}, max rel err {max_rel:.3g}")
        first.append(v)
        if kinds[i] == FP16:
            name = graph.names[i]
            new.setdefault(name, KeptNode(name, node.op_type, graph._outs(i),
                                          f"fp16 diverges first at its output {v!r}: {what}", next_round, "diverged"))
            continue
        # Already fp32 and its inputs pass, yet its output diverges: it amplifies the fp16
        # rounding upstream, so keep the nearest fp16 nodes feeding it.
        for j in _fp16_sources(graph, kinds, i):
            name = graph.names[j]
            new.setdefault(name, KeptNode(
                name, graph.nodes[j].op_type, graph._outs(j),
                f"feeds {graph.names[i]} ({node.op_type}, fp32), whose output {v!r} amplifies the fp16 rounding "
                f"upstream: {what}", next_round, "diverged"))
    return first, list(new.values())


def _finite_peak(arr: np.ndarray) -> float:
    arr = np.asarray(arr)
    if not np.issubdtype(arr.dtype, np.floating) or arr.size == 0:
        return 0.0
    finite = np.abs(arr[np.isfinite(arr)])
    return float(finite.max()) if finite.size else 0.0


def _fp16_sources(graph: _Graph, kinds: Sequence[str], i: int) -> list[int]:
    """The nearest fp16 nodes upstream of node ``i`` through float values (in graph order)."""
    found: set[int] = set()
    seen: set[int] = set()
    stack = [i]
    while stack:
        k = stack.pop()
        for u in graph.nodes[k].input:
            j = graph.producer.get(u)
            if j is None or j in seen or j in graph.const_nodes or not graph.is_float(u):
                continue
            seen.add(j)
            if kinds[j] == FP16:
                found.add(j)
            else:
                stack.append(j)
    return sorted(found)


def _precision_error(result: Fp16Result, why: str) -> PrecisionError:
    last = result.rounds[-1]
    kept = "\n".join(f"  {k.name} ({k.op_type}) -> {', '.join(k.outputs)}: {k.reason}" for k in result.kept) or "  (none)"
    err = PrecisionError(
        f"fp16 does not match the reference within atol={result.atol:g}, rtol={result.rtol:g}: {why}.\n"
        f"Round {last.round} (fp16 emulation):\n{_format_figures(last.outputs)}\n"
        + (f"Round {last.round} (fp16 model on onnxruntime):\n{_format_figures(last.ort_outputs)}\n"
           if last.ort_outputs else "")
        + f"Diverging first at: {', '.join(last.first_divergence) or '(nowhere in particular)'}\n"
        f"Kept in fp32 ({len(result.kept)}):\n{kept}",
        rows=[r.to_dict() for r in result.rounds],
        node=last.first_divergence[0] if last.first_divergence else None,
        hint="keep this model in fp32, or pass keep_fp32=[...] / relax atol, rtol if the error is plain rounding",
    )
    err.result = result  # type: ignore[attr-defined]
    return err


# --------------------------------------------------------------------------- running and comparing


def _expose(model: onnx.ModelProto, names: Sequence[str], types: Mapping[str, int]) -> onnx.ModelProto:
    """The model with ``names`` added as graph outputs, so ORT returns the intermediates."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {vi.name for vi in out.graph.output}
    produced = {v for n in out.graph.node for v in n.output}
    for v in names:
        if v not in present and v in produced and v in types:
            out.graph.output.append(helper.make_tensor_value_info(v, types[v], None))
    return out


def _real_types(model: onnx.ModelProto, graph: _Graph) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = dict(graph.types)
    for vi in (*inferred.graph.value_info, *inferred.graph.output):
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def _run(model: onnx.ModelProto, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # no fusions hiding fp16 effects
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        wanted = {i.name: i.type for i in session.get_inputs()}
        fed = {k: (np.asarray(v).astype(np.float16) if wanted.get(k) == "tensor(float16)" else np.asarray(v))
               for k, v in feed.items() if k in wanted}
        names = [o.name for o in session.get_outputs()]
        results = session.run(names, fed)
    except Exception as exc:
        raise PrecisionError(f"onnxruntime could not run the model: {type(exc).__name__}: {exc}") from exc
    return {n: (r.astype(np.float32) if r.dtype == np.float16 else r) for n, r in zip(names, results)}


def _compare(ref: np.ndarray, out: np.ndarray, atol: float, rtol: float,
             per_tensor: bool = False) -> tuple[float, float, int, bool]:
    """(max |a-b|, max |a-b|/|ref|, non-finite count, passed) under ``|a-b| <= atol + rtol*|ref|``.

    Same rule as fxtrt.backend.verify: equal infinities and NaN against NaN match; any other
    non-finite difference fails. Non-float tensors must be equal. ``per_tensor`` uses the
    tensor's largest finite ``|ref|`` in place of each element's.
    """
    ref, out = np.asarray(ref), np.asarray(out)
    if ref.shape != out.shape:
        return float("inf"), float("inf"), 0, False
    if ref.size == 0:
        return 0.0, 0.0, 0, True
    if not (np.issubdtype(ref.dtype, np.floating) or np.issubdtype(out.dtype, np.floating)):
        equal = bool(np.array_equal(ref, out))
        return (0.0 if equal else float("inf")), (0.0 if equal else float("inf")), 0, equal
    a, b = ref.astype(np.float64), out.astype(np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    same_inf = np.isinf(a) & (a == b)
    nonfinite = int(np.count_nonzero(~np.isfinite(b) & np.isfinite(a)))
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(both_nan | same_inf, 0.0, np.abs(a - b))
    diff = np.where(np.isnan(diff), np.inf, diff)
    mag = np.where(np.isfinite(a), np.abs(a), 0.0)
    ok = diff <= atol + rtol * (mag.max() if per_tensor else mag)
    rel = diff / np.maximum(mag, np.finfo(np.float64).tiny)
    return float(diff.max()), float(rel.max()), nonfinite, bool(ok.all())


def _figures(
    names: Sequence[str],
    got: Sequence[Mapping[str, np.ndarray]],
    reference: Sequence[Mapping[str, np.ndarray]],
    atol: float,
    rtol: float,
) -> tuple[OutputFigures, ...]:
    out = []
    for n in names:
        worst = (0.0, 0.0, 0, True)
        for g, r in zip(got, reference):
            if n not in r:
                raise ConfigError(f"the reference has no output {n!r}; it has {sorted(r)}")
            a, rel, nf, ok = _compare(np.asarray(r[n]), g[n], atol, rtol)
            worst = (max(worst[0], a), max(worst[1], rel), max(worst[2], nf), worst[3] and ok)
        out.append(OutputFigures(n, *worst))
    return tuple(out)


def _format_figures(figs: Iterable[OutputFigures]) -> str:
    lines = [f"  {'output':20} {'max_abs':>10} {'max_rel':>10} {'inf/nan':>8}  ok"]
    for f in figs:
        lines.append(f"  {f.name:20} {f.max_abs:10.3g} {f.max_rel:10.3g} {f.nonfinite:8d}  {'yes' if f.passed else 'NO'}")
    return "\n".join(lines)
