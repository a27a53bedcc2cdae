"""What the ONNX Runtime rewrites share: an index of the main graph, and small helpers on nodes and dims.

Shapes come from ``value_info`` (what cleanup's shape inference and onnxsim left). Where that
cannot prove a site, :meth:`TuneGraph.infer` runs ONNX shape inference with data propagation
once, so that a size computed at run time (Shape, Slice, Concat) is known too.
"""
from __future__ import annotations

import copy
import logging
import math

import onnx
from onnx import numpy_helper

log = logging.getLogger(__name__)

Dim = int | str | None  # a static size, a symbol, or unknown
FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


class TuneGraph:
    """Index of the main graph: producers, consumers, constants, value shapes and types."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = graph = model.graph
        self.outputs = {o.name for o in graph.output}
        self.initializers = {t.name: t for t in graph.initializer}
        self.constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output}
        self.shapes, self.types = value_shapes(graph)
        self.inferred = False
        self.reindex()

    def infer(self) -> bool:
        """Replace the shapes with ONNX shape inference's, run with data propagation on the graph as
        it is now (its value_info left out, so every symbol comes from one run): what a size
        computed at run time (Shape, Slice, Concat) works out to. False if it had already run."""
        if self.inferred:
            return False
        from fxtrt.backend.shape_inference import weightless

        light, _ = weightless(self.model)
        light = copy.deepcopy(light) if light is self.model else light
        del light.graph.value_info[:]
        try:
            inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
        except Exception:  # noqa: BLE001 - no better shapes; the sites stay unproven
            log.debug("shape inference failed while tuning for ONNX Runtime", exc_info=True)
            return False
        self.shapes, self.types = value_shapes(inferred.graph)
        self.inferred = True
        return True

    def reindex(self) -> None:
        self.producer = {o: n for n in self.graph.node for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        # values an If/Loop/Scan body reads from this graph by name, not through the node's inputs
        self.read_inside = {i for n in self.graph.node for body in bodies(n) for i in reads(body)}

    def only_consumer(self, value: str) -> onnx.NodeProto | None:
        """The one node reading ``value``, when exactly one does and nothing else sees it (no
        graph output, no subgraph)."""
        users = self.consumers.get(value, [])
        visible = value in self.outputs or value in self.read_inside
        return users[0] if len(users) == 1 and not visible else None

    def is_read(self, value: str) -> bool:
        return bool(self.consumers.get(value)) or value in self.outputs or value in self.read_inside

    def scalar(self, value: str) -> float | None:
        """The value of a one-element constant (an initializer or a Constant node), else None."""
        tensor = self.initializers.get(value)
        if tensor is None and value in self.constants:
            attr = next((a for a in self.constants[value].attribute if a.name == "value"), None)
            tensor = attr.t if attr is not None else None
        if tensor is None or math.prod(tensor.dims) != 1:
            return None
        return float(numpy_helper.to_array(tensor).reshape(()))

    def produced_by(self, value: str, op_type: str) -> onnx.NodeProto | None:
        node = self.producer.get(value)
        return node if node is not None and node.op_type == op_type and node.domain in ("", "ai.onnx") else None


def value_shapes(graph: onnx.GraphProto) -> tuple[dict[str, list[Dim]], dict[str, int]]:
    """Dims and element types of every value the graph declares (inputs, value_info, outputs,
    initializers)."""
    shapes: dict[str, list[Dim]] = {}
    types: dict[str, int] = {}
    for value in (*graph.input, *graph.value_info, *graph.output):
        tensor = value.type.tensor_type
        types[value.name] = tensor.elem_type
        if tensor.HasField("shape"):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                  for d in tensor.shape.dim]
    for t in graph.initializer:
        shapes[t.name], types[t.name] = list(t.dims), t.data_type
    return shapes, types


def bodies(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [b for a in node.attribute for b in ([a.g] if a.HasField("g") else []) + list(a.graphs)]


def reads(graph: onnx.GraphProto) -> set[str]:
    """Every name the nodes of ``graph`` and of its own bodies read."""
    return {i for n in graph.node for i in n.input} | {i for n in graph.node for b in bodies(n) for i in reads(b)}


def close_to(value: float | None, want: float, rel: float = 1e-6) -> bool:
    return value is not None and abs(value - want) <= rel * abs(want)


def other_input(node: onnx.NodeProto, value: str) -> str | None:
    """The other input of a two-input node, given one of them."""
    ins = list(node.input)
    if len(ins) != 2 or value not in ins:
        return None
    return ins[1] if ins[0] == value else ins[0]


def same_node(a: onnx.NodeProto | None, b: onnx.NodeProto) -> bool:
    """The same node: outputs are unique names, so the first one identifies it."""
    return a is not None and list(a.output[:1]) == list(b.output[:1])


def same_dim(a: Dim, b: Dim) -> bool:
    """Two dims known to be equal: the same static size, or the same symbol."""
    return a is not None and a == b


def perm_of(node: onnx.NodeProto) -> list[int] | None:
    attr = next((a for a in node.attribute if a.name == "perm"), None)
    return list(attr.ints) if attr is not None else None


def drop_dead(g: TuneGraph) -> None:
    """Remove nodes none of whose outputs is read or a graph output, then unread initializers and
    the value_info of values that no longer exist."""
    while True:
        dead = [n for n in g.graph.node if not any(g.is_read(o) for o in n.output if o)]
        if not dead:
            break
        kept = [n for n in g.graph.node if any(g.is_read(o) for o in n.output if o)]
        del g.graph.node[:]
        g.graph.node.extend(kept)
        g.reindex()
    read = {i for n in g.graph.node for i in n.input} | g.outputs | g.read_inside
    kept_inits = [t for t in g.graph.initializer if t.name in read]
    if len(kept_inits) != len(g.graph.initializer):
        del g.graph.initializer[:]
        g.graph.initializer.extend(kept_inits)
    alive = read | {o for n in g.graph.node for o in n.output}
    kept_info = [v for v in g.graph.value_info if v.name in alive]
    if len(kept_info) != len(g.graph.value_info):
        del g.graph.value_info[:]
        g.graph.value_info.extend(kept_info)
