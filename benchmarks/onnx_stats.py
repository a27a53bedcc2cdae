"""Size of an exported graph: how many nodes, and how many of them only compute shapes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import onnx

SHAPE_OPS = frozenset({"Shape", "Gather", "Unsqueeze", "Concat", "Slice", "Squeeze"})


@dataclass(frozen=True)
class GraphStats:
    nodes: int
    shape_ops: int
    op_counts: dict[str, int]
    file_bytes: int


def _walk(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Every node, including those inside If/Loop/Scan bodies."""
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                nodes.extend(_walk(attr.g))
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    nodes.extend(_walk(sub))
    return nodes


def graph_stats(path: Path) -> GraphStats:
    """Counts after inlining local functions, so exporters that emit functions are counted like those that do not."""
    model = onnx.load(str(path), load_external_data=False)
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    counts = Counter(node.op_type for node in _walk(model.graph))
    locations = {
        entry.value
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    data_bytes = sum((path.parent / loc).stat().st_size for loc in locations if (path.parent / loc).exists())
    return GraphStats(
        nodes=sum(counts.values()),
        shape_ops=sum(n for op, n in counts.items() if op in SHAPE_OPS),
        op_counts=dict(counts.most_common()),
        file_bytes=path.stat().st_size + data_bytes,
    )
