"""The check that every dynamic dim survived emission and cleanup.

Shape inference, GraphSurgeon and onnxsim may each turn a symbolic dim static; a model that
then only runs at the example's size would pass a check at that size. So before any numeric
verification, every output dim that follows a dynamic dim in the capture must be symbolic in
the ONNX model, and every input dim must carry its dim's name.

Example::

    check_dynamic_dims(model, captured, settings)   # EmitError: output 'y' dim 0 ... is static (4)
"""
from __future__ import annotations

from typing import Any

import onnx
import torch

from fxtrt.backend.emit import dim_names
from fxtrt.errors import EmitError
from fxtrt.frontend.capture import CapturedGraph, dynamic_axes
from fxtrt.settings import Settings


def check_dynamic_dims(model: onnx.ModelProto, captured: CapturedGraph, settings: Settings) -> None:
    """Every output dim that follows a dynamic dim in the capture must be symbolic in the ONNX model,
    and every input dim must carry its dynamic dim's name."""
    shapes = dim_names(model)
    outs = [n for n in captured.base.gm.graph.nodes if n.op == "output"][0].args[0]
    traces = [[n for n in c.gm.graph.nodes if n.op == "output"][0].args[0] for c in captured.captures + captured.checks]
    for k, name in enumerate(captured.output_names):
        seen = [_shape_of(t[k]) for t in traces]
        if not settings.dims or any(s is None for s in seen) or name not in shapes:
            continue
        onnx_shape = shapes[name]
        for d in dynamic_axes(seen):
            if d < len(onnx_shape) and isinstance(onnx_shape[d], int) and onnx_shape[d] > 0:
                raise EmitError(
                    f"output {name!r} dim {d} changes with the input size but is static ({onnx_shape[d]}) in the ONNX model",
                    node=outs[k].name if k < len(outs) else None,
                    hint="a size was baked in during emission; please report this with the model",
                )
    for d in settings.dims:
        for i, axis in d.sites:
            got = shapes[captured.input_names[i]][axis]
            if got != d.name:
                raise EmitError(f"input {captured.input_names[i]!r} dim {axis} should be '{d.name}', is {got!r}")


def _shape_of(node: Any) -> tuple[Any, ...] | None:
    v = node.meta.get("val") if hasattr(node, "meta") else None
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None
