"""The fp16 plan: which node computes in which precision, and why a node stays float32.

The float32 model is analysed once (:class:`Fp16Graph`: types, producers, readers, constants,
and the rule that pins a node to float32); :meth:`Fp16Graph.plan` then gives every node a
precision for a set of nodes the caller or the repair keeps in float32.

Example::

    graph = Fp16Graph(model, DEFAULT_FP32_OPS)
    kinds, kept = graph.plan(graph.kept_by_user(["node_mul_1"]))
    # kinds[i] is "fp16" or "fp32" per node; kept says why each fp32 node is fp32
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Collection, Iterable, Mapping

import numpy as np
import onnx
import onnx.defs
from onnx import TensorProto, numpy_helper

from fxtrt.backend.shape_inference import infer_shapes
from fxtrt.errors import ConfigError, PrecisionError

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
FOLLOW_OPS = frozenset({
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Expand", "Tile", "Slice", "Split",
    "Concat", "Gather", "GatherElements", "GatherND", "Pad", "DepthToSpace", "SpaceToDepth", "Where",
})
# Ops that read only the shape of their input: no cast for them.
SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})

FP16, FP32 = "fp16", "fp32"
ELEM = {FP16: TensorProto.FLOAT16, FP32: TensorProto.FLOAT}


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


class Fp16Graph:
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
        inferred = infer_shapes(model)
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

    def kept_by_user(self, names: Iterable[str]) -> dict[str, KeptNode]:
        """The nodes the caller keeps in float32 (``keep_fp32``), checked to exist."""
        names = list(names)
        self.check_names(names)
        return {n: KeptNode(n, self.nodes[self.by_name[n]].op_type, self.outs(self.by_name[n]),
                            "kept by the caller (keep_fp32)", 0, "user") for n in names}

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
                kept.append(KeptNode(name, node.op_type, self.outs(i), rule[1], 0, rule[0]))
                kind = FP32
            elif node.op_type in FOLLOW_OPS:
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

    def outs(self, i: int) -> tuple[str, ...]:
        return tuple(v for v in self.nodes[i].output if v)


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
