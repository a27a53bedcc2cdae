"""A Transpose that only moves a size-1 axis, then a Reshape that drops it, as one ``Squeeze``.

fxtrt's recurrent translation reshapes a one-direction ``RNN``/``GRU``/``LSTM`` output ``Y``
``(T, 1, B, H)`` into ``(T, B, H)`` by way of a Transpose to ``(T, B, 1, H)``. ORT copies the
tensor for the Transpose, though moving a size-1 axis leaves the elements in the same order. The
legacy exporter emits one ``Squeeze``. On the peer family's 2-layer RNNs that copy was 2-4% of a
run::

    Before: Reshape(Transpose(y, [0, 2, 1, 3]), [0, 0, -1])     y: (T, 1, B, H)
    After:  Squeeze(y, [1])

This is done when the axes the Transpose moves past each other are all static 1s, so the flat
order is unchanged. The Reshape's output must be the input with those size-1 axes removed.
Data movement only: the values are the same.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from fxtrt.backend.onnxruntime.tune.graph import Dim, TuneGraph, drop_dead, perm_of, same_dim

SQUEEZE_AXES_INPUT_OPSET = 13  # Squeeze takes its axes as an input from opset 13


def _keeps_order(dims: list[Dim], perm: list[int]) -> bool:
    """Whether ``perm`` moves only static-1 axes: the other axes stay in their order."""
    kept = [p for p in perm if dims[p] != 1]
    return kept == sorted(kept)


def _dropped_axes(dims: list[Dim], out: list[Dim]) -> list[int] | None:
    """The static-1 axes of ``dims`` that, removed, leave ``out``; None if no such set."""
    axes, j = [], 0
    for i, d in enumerate(dims):
        if j < len(out) and same_dim(d, out[j]):
            j += 1
        elif d == 1:
            axes.append(i)
        else:
            return None
    return axes if j == len(out) and axes else None


def squeeze_unit_axis(g: TuneGraph) -> int:
    """``Reshape(Transpose(y, p), s)`` that only drops size-1 axes of ``y`` -> ``Squeeze(y, axes)``."""
    opset = next((o.version for o in g.model.opset_import if o.domain in ("", "ai.onnx")), 0)
    replaced: dict[str, onnx.NodeProto] = {}
    gone: set[str] = set()
    for transpose in [n for n in g.graph.node if n.op_type == "Transpose"]:
        reshape = g.only_consumer(transpose.output[0])
        dims, perm = g.shapes.get(transpose.input[0]), perm_of(transpose)
        out = g.shapes.get(reshape.output[0]) if reshape is not None and reshape.op_type == "Reshape" else None
        if out is None or dims is None or perm is None or not _keeps_order(dims, perm):
            continue
        axes = _dropped_axes(dims, out)
        if axes is None:
            continue
        name = reshape.output[0]
        if opset >= SQUEEZE_AXES_INPUT_OPSET:
            g.graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), name + "_axes"))
            squeeze = onnx.helper.make_node("Squeeze", [transpose.input[0], name + "_axes"], [name], name=reshape.name or None)
        else:
            squeeze = onnx.helper.make_node("Squeeze", [transpose.input[0]], [name], name=reshape.name or None, axes=axes)
        squeeze.metadata_props.extend(reshape.metadata_props)
        replaced[name] = squeeze
        gone.add(transpose.output[0])
    if not replaced:
        return 0
    kept = [replaced.get(n.output[0], n) for n in g.graph.node if not n.output or n.output[0] not in gone]
    del g.graph.node[:]
    g.graph.node.extend(kept)
    g.reindex()
    drop_dead(g)
    return len(replaced)
