"""Materialise an fp16 plan: the real fp16 model, or its float32 emulation.

The emulation is the same graph computed in float32 with every value the real model stores in
fp16 rounded through an explicit ``Cast(fp16) -> Cast(fp32)`` pair, which onnxruntime's CPU
provider keeps (it drops the casts of the real model and hides fp16 overflows).

Example::

    half = convert_to_fp16(model)                       # the default plan, materialised
    emulated = materialize(graph, kinds, emulate=True, keep_io_types=True)
"""
from __future__ import annotations

import logging
from typing import Collection, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fxtrt.backend.fp16.plan import DEFAULT_FP32_OPS, ELEM, FP16, FP32, SHAPE_ONLY_OPS, Fp16Graph, KeptNode
from fxtrt.backend.shape_inference import infer_shapes
from fxtrt.errors import PrecisionError

log = logging.getLogger(__name__)


def materialize(graph: Fp16Graph, kinds: Sequence[str], *, emulate: bool, keep_io_types: bool) -> onnx.ModelProto:
    """The model ``kinds`` (one precision per node) describes; ``emulate`` for the float32 emulation."""
    return _Emitter(graph, kinds, emulate=emulate, keep_io_types=keep_io_types).model()


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

    def __init__(self, graph: Fp16Graph, kinds: Sequence[str], *, emulate: bool, keep_io_types: bool) -> None:
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
            self.nodes.append(helper.make_node("Cast", [src], [dst], name=self.fresh(f"{dst}__cast"), to=ELEM[kind]))
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
                vi.type.tensor_type.elem_type = ELEM[FP32 if self.emulate else self.out_kind[vi.name]]
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
            if node.op_type in SHAPE_ONLY_OPS:
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
            vi.type.tensor_type.elem_type = ELEM[FP32 if self.emulate else self.value_kinds[name]]
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
    graph = Fp16Graph(model, fp32_ops)
    kinds, kept = graph.plan(graph.kept_by_user(keep_fp32))
    return finish(graph, kinds, kept, keep_io_types)


def finish(graph: Fp16Graph, kinds: Sequence[str], kept: Sequence[KeptNode], keep_io_types: bool) -> onnx.ModelProto:
    """The real fp16 model of a plan, marked with its precision and fp32 nodes, and type-checked."""
    out = materialize(graph, kinds, emulate=False, keep_io_types=keep_io_types)
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
        infer_shapes(converted, check_type=True, strict_mode=True)
    except Exception as exc:
        try:
            infer_shapes(original, check_type=True, strict_mode=True)
        except Exception:
            log.debug("strict shape inference fails on the fp32 model too; not holding it against fp16: %s", exc)
            return
        raise PrecisionError(f"fp16 conversion produced an invalid model (a bug in fxtrt): {exc}") from exc
