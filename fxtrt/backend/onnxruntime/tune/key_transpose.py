"""Attention's key transposed in one step.

torch.onnx's attention translation (with a mask) turns the key ``(B, H, L, E)`` into
``(B, H, E, L)`` through a 3-D view: two Transposes, each a copy in ORT, where one does::

    Before: Reshape(Transpose(Reshape(Transpose(k, p), [-1, L, E]), [0, 2, 1]), [B, H, E, L])
    After:  Transpose(k, [p0, p1, p3, p2])

The rewrite is done only when the shapes prove that the reshapes merge and split the two leading
dims. The run-time Shape/Slice/Concat nodes that built their target shapes (with a dynamic
sequence) go too. Data movement only: the values are the same.
"""
from __future__ import annotations

import onnx
from onnx import numpy_helper

from fxtrt.backend.onnxruntime.tune.graph import Dim, TuneGraph, drop_dead, perm_of, same_dim, same_node


def _reshaped(g: TuneGraph, reshape: onnx.NodeProto) -> list[Dim] | None:
    """The output dims of ``reshape``: shape inference's, with the static sizes of a constant
    target shape filling in what inference left unknown."""
    dims = g.shapes.get(reshape.output[0])
    target = g.initializers.get(reshape.input[1]) if len(reshape.input) > 1 else None
    if target is None:
        return dims
    sizes = [int(v) for v in numpy_helper.to_array(target).reshape(-1)]
    if dims is None or len(dims) != len(sizes):
        dims = [None] * len(sizes)
    return [v if v > 0 else d for v, d in zip(sizes, dims)]


def _key_chain(g: TuneGraph, t2: onnx.NodeProto) -> tuple[onnx.NodeProto, ...] | None:
    """``(t1, r1, t2, r2)`` when ``t2`` is the middle of a provable key-transpose chain."""
    r1 = g.produced_by(t2.input[0], "Reshape")
    t1 = g.produced_by(r1.input[0], "Transpose") if r1 is not None else None
    r2 = g.only_consumer(t2.output[0])
    if t1 is None or r2 is None or r2.op_type != "Reshape" or not same_node(g.only_consumer(r1.output[0]), t2) \
            or len(perm_of(t1) or []) != 4 or t1.output[0] in g.outputs or t1.output[0] in g.read_inside:
        return None
    # besides r1, only Shape reads the first transpose (torch.onnx computes r1's and r2's shapes
    # from it at run time): once those reshapes are gone, so are the Shapes and the transpose
    if any(n.op_type != "Shape" for n in g.consumers.get(t1.output[0], []) if not same_node(n, r1)):
        return None
    s1, s3, s4 = g.shapes.get(t1.output[0]), _reshaped(g, r1), _reshaped(g, r2)
    if s1 is None or s3 is None or s4 is None or len(s1) != 4 or len(s3) != 3 or len(s4) != 4:
        return None
    # A reshape keeps the element count. r1 keeps the last two dims (L, E), so its first is the two
    # leading dims merged; r2 ends in (H, E, L), so its first is B again: the split of that merge.
    pairs = ((s3[1], s1[2]), (s3[2], s1[3]), (s4[1], s1[1]), (s4[2], s1[3]), (s4[3], s1[2]))
    return (t1, r1, t2, r2) if all(same_dim(a, b) for a, b in pairs) else None


def key_transpose(g: TuneGraph) -> int:
    """``Reshape(Transpose(Reshape(Transpose(k, p), [-1, L, E]), [0, 2, 1]), [B, H, E, L])`` -> one Transpose."""
    middles = [n for n in g.graph.node if n.op_type == "Transpose" and perm_of(n) == [0, 2, 1]]
    chains = [c for c in (_key_chain(g, n) for n in middles) if c is not None]
    if len(chains) < len(middles) and g.infer():  # shapes computed at run time: what inference proves
        chains = [c for c in (_key_chain(g, n) for n in middles) if c is not None]
    if not chains:
        return 0
    merged_at: dict[str, onnx.NodeProto] = {}
    for t1, _, _, r2 in chains:
        p = perm_of(t1)
        merged = onnx.helper.make_node("Transpose", [t1.input[0]], [r2.output[0]], name=t1.name or None,
                                       perm=[p[0], p[1], p[3], p[2]])
        merged.metadata_props.extend(t1.metadata_props)
        merged_at[r2.output[0]] = merged
    gone = {n.output[0] for chain in chains for n in chain[1:]}  # the first transpose goes with its Shapes
    kept = [merged_at.get(n.output[0], n) for n in g.graph.node if not n.output or n.output[0] not in gone
            or n.output[0] in merged_at]
    del g.graph.node[:]
    g.graph.node.extend(kept)
    g.reindex()
    drop_dead(g)
    return len(chains)
