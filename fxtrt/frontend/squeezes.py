"""``x.squeeze(d)`` over a dynamic dim whose range holds 1: refused at the squeeze's line.

Eager PyTorch drops dim ``d`` only where its size is 1. torch.export traces the squeeze over a
symbolic size as if that size were never 1 (the graph keeps the dim), while ONNX's ``Squeeze``
always drops it and fails at any other size. Where the declared range holds 1 (often the example's
own size) the output's rank changes with the size, which one graph cannot express.

Example::

    def forward(self, x):           # example (1, 1, 16), dynamic={0: {1: (1, 4, 8)}}
        return x.squeeze(1)         # GeneralizationError at this line
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.fx

from fxtrt.errors import GeneralizationError, StructureError
from fxtrt.frontend.source import source_of
from fxtrt.settings import DynamicDim

_SQUEEZES = tuple(getattr(torch.ops.aten.squeeze, name) for name in ("dim", "dims")
                  if hasattr(torch.ops.aten.squeeze, name))


def check_squeezes(gm: torch.fx.GraphModule, dims: Sequence[DynamicDim]) -> None:
    """Raise where a squeeze removes a dim that is one dynamic dim whose range holds 1 (a
    StructureError for the batch, which static-batch buckets can still serve)."""
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    by_symbol: dict[object, DynamicDim] = {}
    for d in dims:
        for i, axis in d.sites:
            val = inputs[i].meta.get("val") if i < len(inputs) else None
            size = val.shape[axis] if isinstance(val, torch.Tensor) and axis < val.dim() else None
            if isinstance(size, torch.SymInt):
                by_symbol[size.node.expr] = d
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in _SQUEEZES:
            continue
        val = node.args[0].meta.get("val") if isinstance(node.args[0], torch.fx.Node) else None
        if not isinstance(val, torch.Tensor) or val.dim() == 0:
            continue
        axes = node.args[1] if isinstance(node.args[1], (list, tuple)) else [node.args[1]]
        for axis in axes:
            size = val.shape[axis % val.dim()]
            d = by_symbol.get(size.node.expr) if isinstance(size, torch.SymInt) else None
            if d is None or d.min > 1:
                continue
            where = "is 1 in the example" if d.example == 1 else f"is 1 at its min ({d.example} in the example)"
            error = StructureError if d.is_batch else GeneralizationError
            raise error(
                f"squeeze({axis}) removes a dim only where its size is 1, and that dim is dynamic dim '{d.name}' "
                f"({d.min}..{d.max}), which {where}: the output's rank would change with '{d.name}', which one "
                "ONNX graph cannot express",
                node=node.name, source=source_of(node),
                hint=f"if that dim is always 1, leave '{d.name}' out of the dynamic dims (with an example of size 1); "
                     "if it should stay dynamic, remove the squeeze",
            )
