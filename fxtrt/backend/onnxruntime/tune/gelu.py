"""GELU with its operands in the order ORT's ``GeluFusion`` matches.

torch.onnx translates ``gelu`` (erf form) as ``x * (0.5 * (1 + erf(x / sqrt2)))``. ORT's fusion
looks for ``(x * 0.5) * (1 + erf(...))`` (or ``(x * (1 + erf)) * 0.5``) and leaves torch.onnx's
order as five kernels (Div, Erf, Add, Mul, Mul), each a pass over the activation::

    Before: Mul(x, Mul(0.5, Add(Erf(Div(x, sqrt2)), 1)))     5 kernels in ORT
    After:  Mul(Mul(x, 0.5), Add(Erf(Div(x, sqrt2)), 1))     1 Gelu (or BiasGelu) kernel

Both orders scale by 0.5, which is exact, so each rounds once and gives the same result.
"""
from __future__ import annotations

import math

from fxtrt.backend.onnxruntime.tune.graph import TuneGraph, close_to, other_input


def gelu(g: TuneGraph) -> int:
    """``Mul(x, Mul(0.5, Add(Erf(Div(x, sqrt2)), 1)))`` -> ``Mul(Mul(x, 0.5), Add(...))``."""
    changed = 0
    for div in [n for n in g.graph.node if n.op_type == "Div" and n.domain in ("", "ai.onnx")]:
        x = div.input[0]
        if not close_to(g.scalar(div.input[1]), math.sqrt(2.0)):
            continue
        erf = g.only_consumer(div.output[0])
        add = g.only_consumer(erf.output[0]) if erf is not None and erf.op_type == "Erf" else None
        if add is None or add.op_type != "Add" or not close_to(g.scalar(other_input(add, erf.output[0]) or ""), 1.0):
            continue
        half_mul = g.only_consumer(add.output[0])
        if half_mul is None or half_mul.op_type != "Mul":
            continue
        half = other_input(half_mul, add.output[0])
        outer = g.only_consumer(half_mul.output[0])
        if half is None or not close_to(g.scalar(half), 0.5) or outer is None or outer.op_type != "Mul" \
                or other_input(outer, half_mul.output[0]) != x:
            continue
        half_mul.input[:] = [x, half]
        outer.input[:] = [half_mul.output[0], add.output[0]]
        changed += 1
    if changed:
        g.reindex()
    return changed
