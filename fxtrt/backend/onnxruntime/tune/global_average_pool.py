"""A mean over the two spatial dims of a 4-D tensor as ``GlobalAveragePool``.

``adaptive_avg_pool2d(x, 1)`` and squeeze-and-excitation's ``x.mean((2, 3), keepdim=True)`` reach
ONNX as ``ReduceMean``. The legacy exporter emits ``GlobalAveragePool``. On x86, ORT runs
convolutions in its blocked NCHWc layout. GlobalAveragePool has an NCHWc kernel and ReduceMean
does not, so each ReduceMean costs a ``ReorderInput`` back out of the layout. On efficientnet_b0
(17 of them) that was 32 reorders instead of 16, about 2% of its run time::

    Before: ReduceMean(x, axes=[2, 3], keepdims=1)      x: (N, C, H, W)
    After:  GlobalAveragePool(x)

Both compute the mean over H and W. Only the summation order may differ.
"""
from __future__ import annotations

import onnx
from onnx import numpy_helper

from fxtrt.backend.onnxruntime.tune.graph import FLOATS, TuneGraph, drop_dead


def _axes(g: TuneGraph, node: onnx.NodeProto) -> list[int] | None:
    """A reduction's axes: the attribute (opset < 18) or the constant second input."""
    attr = next((a for a in node.attribute if a.name == "axes"), None)
    if attr is not None:
        return list(attr.ints)
    axes = g.initializers.get(node.input[1]) if len(node.input) > 1 else None
    return [int(v) for v in numpy_helper.to_array(axes).reshape(-1)] if axes is not None else None


def global_average_pool(g: TuneGraph) -> int:
    """``ReduceMean(x, axes=[2, 3], keepdims=1)`` of a 4-D ``x`` -> ``GlobalAveragePool(x)``."""
    changed = 0
    for node in g.graph.node:
        if node.op_type != "ReduceMean" or node.domain not in ("", "ai.onnx"):
            continue
        shape, axes = g.shapes.get(node.input[0]), _axes(g, node)
        keepdims = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
        if shape is None or len(shape) != 4 or axes is None or sorted(a % 4 for a in axes) != [2, 3] \
                or keepdims != 1 or g.types.get(node.input[0]) not in FLOATS:
            continue
        node.op_type = "GlobalAveragePool"
        del node.input[1:]
        del node.attribute[:]
        changed += 1
    if changed:
        drop_dead(g)  # an axes initializer no longer read
    return changed
