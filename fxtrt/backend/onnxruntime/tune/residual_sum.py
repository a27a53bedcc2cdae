"""A residual ``Add`` in front of ``LayerNormalization`` as ``Sum``, where ORT would fuse it.

Where both operands are 3-D with static dims 1 and 2, ORT's ``SkipLayerNormFusion`` fuses ``Add``
+ ``LayerNormalization`` into ``com.microsoft.SkipLayerNormalization``. Its CPU float kernel
(``contrib_ops/cpu/skip_layer_norm.cc``, ORT 1.32: scalar loops, one divide per element) ran
6-7x slower than the Add and LayerNormalization kernels it replaces, measured on [8, 64, 256]::

    Before: LayerNormalization(Add(a, b))      ORT: SkipLayerNormalization
    After:  LayerNormalization(Sum(a, b))      ORT: Sum, LayerNormalization

``Sum(a, b)`` is ``Add(a, b)``: the same broadcasting and one rounding. Only the Adds that meet
the fusion's shape condition are rewritten. This one is tuned for ORT's CPU provider: TensorRT
parses Sum as it parses Add, and ORT's CUDA provider would lose a fusion that is fast there.
"""
from __future__ import annotations

import onnx

from fxtrt.backend.onnxruntime.tune.graph import FLOATS, TuneGraph, same_dim, same_node


def _skip_layer_norm_fusable(g: TuneGraph, add: onnx.NodeProto) -> bool:
    """ORT's ``CheckFirstAdd``: float operands, both 3-D, dims 1 and 2 static and equal, dim 0 the
    same static size or the same symbol."""
    shapes = [g.shapes.get(i) for i in add.input]
    if len(shapes) != 2 or any(s is None or len(s) != 3 for s in shapes):
        return False
    if any(g.types.get(i) not in FLOATS for i in add.input):
        return False
    a, b = shapes
    static = all(isinstance(a[d], int) and a[d] > 0 and a[d] == b[d] for d in (1, 2))
    return static and same_dim(a[0], b[0])


def residual_sum(g: TuneGraph) -> int:
    """``LayerNormalization(Add(a, b))`` -> ``LayerNormalization(Sum(a, b))`` where ORT would fuse the Add."""
    changed = 0
    for ln in [n for n in g.graph.node if n.op_type == "LayerNormalization" and n.domain in ("", "ai.onnx")]:
        add = g.produced_by(ln.input[0], "Add")
        if add is None or not same_node(g.only_consumer(add.output[0]), ln) or not _skip_layer_norm_fusable(g, add):
            continue
        add.op_type = "Sum"
        changed += 1
    if changed:
        g.reindex()
    return changed
