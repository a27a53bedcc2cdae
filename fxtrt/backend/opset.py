"""Bring torch.onnx's opset-18 output down to the requested opset (17 by default).

torch.onnx emits opset 18 at the lowest. Its own down-conversion, and ONNX's version converter
(1.23) behind it, have no 18→17 adapter for Split and leave opset-18 attributes on Reduce ops;
torch.onnx then silently keeps opset 18. The step 18→17 is small and is done here: Reduce ops
take ``axes`` as an attribute again, Split loses ``num_outputs``, and opset-18-only features are
refused with the node's name. Below 17, ONNX's converter takes over (its adapters exist there).
An op newer than the requested opset (Col2Im, from 18) is refused first, naming the lowest opset
that has it and the user's line that made it.

Before (18):  ReduceMean(x, axes=Constant([2, 3]))       Split(x, num_outputs=2)
After  (17):  ReduceMean(x) {axes=[2, 3]}                Split(x)   (equal parts, as in opset 13)
"""
from __future__ import annotations

import re
from typing import Iterator

import onnx
import onnx.numpy_helper
import onnx.version_converter

from fxtrt.backend.shape_inference import infer_shapes, weightless
from fxtrt.errors import EmitError
from fxtrt.frontend.source import onnx_node_source

# Reduce ops whose `axes` moved from attribute to input in opset 18 (ReduceSum moved in 13).
REDUCE_18 = frozenset({
    "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
})


def opset_of(model: onnx.ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def convert_opset(model: onnx.ModelProto, opset: int, *, in_place: bool = False) -> onnx.ModelProto:
    """``model`` at ``opset``, checked by onnx.checker, or an EmitError naming the node.
    ``in_place``: convert ``model`` itself (the caller owns it), not a copy of its weights."""
    current = opset_of(model)
    if current == opset:
        return model
    if current != 18 or opset > 18:
        raise EmitError(f"cannot convert an opset-{current} model to opset {opset}")
    _check_ops_exist(model, opset)
    model = _down_18_to_17(model, in_place)
    if opset < 17:
        try:
            model = onnx.version_converter.convert_version(model, opset)
        except Exception as exc:
            raise EmitError(
                f"ONNX's version converter could not bring the model from opset 17 to {opset}: "
                f"{(str(exc).strip().splitlines() or [''])[-1]}",
                hint="use opset=17 (the seed's recommendation) or 18",
            ) from exc
    try:
        onnx.checker.check_model(weightless(model)[0])  # the converted nodes, not the weights torch.onnx wrote
    except onnx.checker.ValidationError as exc:
        raise EmitError(f"the opset-{opset} model does not pass onnx.checker: {str(exc).splitlines()[0]}") from exc
    return model


def lowest_opset(op_type: str, domain: str = "") -> int | None:
    """The first opset of ``domain`` that defines ``op_type``; None when no opset does."""
    try:
        schema = onnx.defs.get_schema(op_type, onnx.defs.onnx_opset_version(), domain)
    except onnx.defs.SchemaError:
        return None
    while schema.since_version > 1:
        try:
            schema = onnx.defs.get_schema(op_type, schema.since_version - 1, domain)
        except onnx.defs.SchemaError:
            break
    return schema.since_version


def _aten_op(node: onnx.NodeProto) -> str | None:
    """The torch op torch.onnx translated into ``node`` (``aten.col2im.default``), from its metadata."""
    fx = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.fx_node"), "")
    found = re.search(r"target=torch\.ops\.([\w.]+)", fx)
    return found.group(1) if found else None


def _check_ops_exist(model: onnx.ModelProto, opset: int) -> None:
    """Refuse an op that the requested opset does not have, before any conversion runs: ONNX's
    converter would fail on it later with a message about adapters, not about the op."""
    for node in _nodes(model):
        if node.domain not in ("", "ai.onnx"):
            continue
        since = lowest_opset(node.op_type)
        if since is not None and since > opset:
            aten = _aten_op(node)
            raise EmitError(
                f"{node.op_type}{f' (from {aten})' if aten else ''} has no ONNX form before opset {since}, "
                f"and opset {opset} was requested",
                node=node.name, source=onnx_node_source(node),
                hint=f"compile with opset={since} (fxtrt compile --opset {since})",
            )


def _down_18_to_17(src: onnx.ModelProto, in_place: bool = False) -> onnx.ModelProto:
    model = src if in_place else onnx.ModelProto()
    if not in_place:
        model.CopyFrom(src)
    consts = {k: v for g in _graphs(model.graph) for k, v in _constants(g).items()}
    # shapes only for a Split that needs its input's size (shape inference is the conversion's main cost)
    needs_shapes = any(n.op_type == "Split" and any(a.name == "num_outputs" for a in n.attribute)
                       for n in _nodes(model))
    shapes = _static_shapes(model) if needs_shapes else {}
    for node in _nodes(model):
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            _node_down_18_to_17(node, consts, shapes)
        except EmitError as exc:
            if exc.source is not None:
                raise
            raise EmitError(exc.message, node=exc.node, source=onnx_node_source(node), hint=exc.hint) from None
    for o in [*model.opset_import, *(o for f in model.functions for o in f.opset_import)]:
        if o.domain in ("", "ai.onnx"):
            o.version = 17
    return model


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every graph inside it (If branches, Loop and Scan bodies), outer first."""
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _graphs(g)


def _nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node of the model: its graph's, its subgraphs' (torch.cond's branches, a scan's
    body) and its functions'."""
    for graph in _graphs(model.graph):
        yield from graph.node
    for function in model.functions:
        yield from function.node


def _node_down_18_to_17(node: onnx.NodeProto, consts: dict[str, onnx.TensorProto],
                        shapes: dict[str, list[int | None]]) -> None:
    if node.op_type in REDUCE_18:
        _reduce_axes_to_attribute(node, consts)
    elif node.op_type == "Split":
        _split_without_num_outputs(node, shapes)
    elif node.op_type == "Resize":
        _require_defaults(node, {"antialias": 0, "keep_aspect_ratio_policy": b"stretch"}, forbid=("axes",))
    elif node.op_type in ("ScatterElements", "ScatterND"):
        red = next((a.s for a in node.attribute if a.name == "reduction"), b"none")
        if red in (b"max", b"min"):
            raise EmitError(f"{node.name}: {node.op_type} reduction={red.decode()} needs opset 18",
                            node=node.name, hint="use opset=18")
    elif node.op_type == "Pad" and len(node.input) > 3 and node.input[3]:
        raise EmitError(f"{node.name}: Pad with an axes input needs opset 18", node=node.name, hint="use opset=18")


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    out = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = a.t
                elif a.name == "value_ints":
                    out[node.output[0]] = onnx.helper.make_tensor(node.output[0], onnx.TensorProto.INT64, [len(a.ints)], a.ints)
    return out


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    inferred = infer_shapes(model)
    out = {}
    for vi in [vi for g in _graphs(inferred.graph) for vi in (*g.input, *g.value_info, *g.output)]:
        if vi.type.tensor_type.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    return out


def _reduce_axes_to_attribute(node: onnx.NodeProto, consts: dict[str, onnx.TensorProto]) -> None:
    noop = next((a.i for a in node.attribute if a.name == "noop_with_empty_axes"), 0)
    for a in [a for a in node.attribute if a.name == "noop_with_empty_axes"]:
        node.attribute.remove(a)
    if len(node.input) < 2 or not node.input[1]:
        if noop:
            raise EmitError(f"{node.name}: {node.op_type} with noop_with_empty_axes=1 has no opset-17 form",
                            node=node.name, hint="use opset=18")
        return
    axes_name = node.input[1]
    if axes_name not in consts:
        raise EmitError(f"{node.name}: {node.op_type} has computed axes, which opset 17 cannot express",
                        node=node.name, hint="use opset=18")
    axes = [int(v) for v in onnx.numpy_helper.to_array(consts[axes_name]).reshape(-1)]
    del node.input[1:]
    if axes:
        node.attribute.append(onnx.helper.make_attribute("axes", axes))
    elif noop:
        raise EmitError(f"{node.name}: {node.op_type} with empty axes and noop_with_empty_axes=1",
                        node=node.name, hint="use opset=18")


def _split_without_num_outputs(node: onnx.NodeProto, shapes: dict[str, list[int | None]]) -> None:
    attr = next((a for a in node.attribute if a.name == "num_outputs"), None)
    if attr is None:
        return
    node.attribute.remove(attr)
    if len(node.input) > 1 and node.input[1]:
        return
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    shape = shapes.get(node.input[0])
    size = shape[axis] if shape and -len(shape) <= axis < len(shape) else None
    if size is None or size % attr.i:
        # Opset 17 without a split input means equal parts; uneven or unknown sizes need 18.
        raise EmitError(f"{node.name}: Split into {attr.i} parts of a dim of size {size or 'unknown'} needs opset 18",
                        node=node.name, hint="use opset=18")


def _require_defaults(node: onnx.NodeProto, defaults: dict[str, object], forbid: tuple[str, ...] = ()) -> None:
    for a in list(node.attribute):
        if a.name in forbid:
            raise EmitError(f"{node.name}: {node.op_type}.{a.name} needs opset 18", node=node.name, hint="use opset=18")
        if a.name in defaults:
            value = onnx.helper.get_attribute_value(a)
            if value != defaults[a.name]:
                raise EmitError(f"{node.name}: {node.op_type} {a.name}={value!r} needs opset 18",
                                node=node.name, hint="use opset=18")
            node.attribute.remove(a)
