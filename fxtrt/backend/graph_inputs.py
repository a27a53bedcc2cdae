"""The inputs of an ONNX graph, read in one place.

Runners need them as Polygraphy metadata, the TensorRT planner as names, types and dims, and
the plan checks to compare against; each used to read the graph its own way. Initializers listed
among the graph inputs (older exporters did that) are weights, not inputs, and are left out.

Example::

    [i.name for i in graph_inputs(Path("out/model.onnx"))]      # ["x"]
    input_metadata(Path("out/model_b4.onnx"), [(0, 0)])         # x: float32 [None, 3, 224, 224]
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from polygraphy.common import TensorMetadata

from fxtrt.errors import ConfigError


@dataclass(frozen=True)
class GraphInput:
    """One graph input: ``dims`` holds an int for a static dim, a name for a symbolic one, and
    None for a dim with neither."""

    name: str
    elem_type: int
    dims: tuple[int | str | None, ...]

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(self.elem_type))

    @property
    def dtype_name(self) -> str:
        """``"float32"``; ``"?"`` when the graph does not say."""
        return self.numpy_dtype.name if self.elem_type else "?"


def graph_inputs(model: Path | onnx.ModelProto) -> tuple[GraphInput, ...]:
    """The graph's inputs in order (weights are not read from ``model``'s external data)."""
    if not isinstance(model, onnx.ModelProto):
        if not Path(model).is_file():
            raise ConfigError(f"ONNX model {model} does not exist")
        model = onnx.load(str(model), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param if d.HasField("dim_param") else None)
                     for d in tt.shape.dim)
        out.append(GraphInput(vi.name, tt.elem_type, dims))
    return tuple(out)


def input_metadata(model: Path | onnx.ModelProto, dynamic_sites: Sequence[tuple[int, int]] = (), *,
                   all_dynamic: bool = False) -> TensorMetadata:
    """Polygraphy input metadata: names, dtypes and shapes (a symbolic or unknown dim is its name
    or None). ``dynamic_sites`` (input index, axis), a static model's batch axes, or with
    ``all_dynamic`` every axis, are marked dynamic."""
    meta = TensorMetadata()
    for i, gi in enumerate(graph_inputs(model)):
        shape: list[Any] = [None if all_dynamic else (d or None) for d in gi.dims]
        for j, axis in dynamic_sites:
            if j == i:
                shape[axis] = None
        meta.add(gi.name, dtype=gi.numpy_dtype, shape=shape)
    return meta
