"""Emit ONNX from the rewritten GraphModule, with every dynamic dim named.

The GraphModule now computes its sizes from ``sym_size`` of its inputs, so torch.export with
named ``Dim``s traces it symbolically; a dim that still got specialised means a size was baked
in, and is an error here rather than a silently static model.
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from dataclasses import dataclass
from typing import Sequence

import onnx
import torch
import torch._decomp
import torch.fx

from fxtrt.backend.opset import convert_opset
from fxtrt.errors import EmitError, GeneralizationError
from fxtrt.frontend.source import location_of_traceback
from fxtrt.settings import DynamicDim

log = logging.getLogger(__name__)

# torch.onnx's lowest native opset; lower ones are converted afterwards.
EXPORTER_OPSET = 18
LAYER_NORMS = frozenset({torch.ops.aten.layer_norm.default, torch.ops.aten.native_layer_norm.default})


@dataclass
class Emitted:
    model: onnx.ModelProto
    notes: list[str]


def has_layer_norm(gm: torch.fx.GraphModule) -> bool:
    return any(n.op == "call_function" and n.target in LAYER_NORMS for n in gm.graph.nodes)


def _dynamic_shapes(inputs: Sequence[torch.Tensor], dims: Sequence[DynamicDim]):
    spec: list[dict[int, torch.export.Dim] | None] = [None] * len(inputs)
    for d in dims:
        sym = torch.export.Dim(d.name, min=1, max=max(d.max, 2) * 4)
        for i, axis in d.sites:
            spec[i] = {**(spec[i] or {}), axis: sym}
    return tuple(spec)


def emit_onnx(
    gm: torch.fx.GraphModule,
    inputs: Sequence[torch.Tensor],
    dims: Sequence[DynamicDim],
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int,
) -> Emitted:
    """ONNX for ``gm`` with the dims in ``dims`` symbolic, named as in the settings."""
    notes: list[str] = []
    inputs = tuple(t.to(torch.float32) if t.dtype == torch.float64 else t for t in inputs)
    try:
        ep = torch.export.export(gm, inputs, dynamic_shapes=_dynamic_shapes(inputs, dims) if dims else None, strict=False)
    except Exception as exc:
        loc = location_of_traceback(exc.__traceback__)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GeneralizationError(
            f"the generalised graph does not trace with symbolic sizes: {type(exc).__name__}: {first}",
            source=str(loc) if loc else None,
            hint="a size may still be baked in; run fxtrt explain on the model to see where",
        ) from exc
    if opset < 17 and has_layer_norm(gm):
        notes.append(
            f"the model has LayerNorm but opset={opset} < 17: LayerNorm was decomposed into primitive ops; "
            "the seed recommends opset >= 17 with TensorRT >= 8.6.1"
        )
        table = torch.export.default_decompositions()
        table.update({op: torch._decomp.decomposition_table[op] for op in (torch.ops.aten.native_layer_norm.default,)})
        ep = ep.run_decompositions(table)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), _quiet_loggers("torch.onnx", "onnxscript"):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                ep, inputs, dynamo=True, opset_version=max(opset, EXPORTER_OPSET),
                input_names=list(input_names), output_names=list(output_names),
                optimize=True, verbose=False, external_data=True,
            )
    except Exception as exc:
        raise EmitError(
            f"torch.onnx could not translate the graph to ONNX: {type(exc).__name__}: "
            f"{(str(exc).strip().splitlines() or [''])[0]}",
            hint="an op may lack an ONNX translation at this opset; try opset=18",
        ) from exc
    model = convert_opset(program.model_proto, opset)
    _name_dims(model, dims, input_names)
    return Emitted(model, notes)


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """torch.onnx logs its own progress and opset warnings; fxtrt reports what matters itself."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _name_dims(model: onnx.ModelProto, dims: Sequence[DynamicDim], input_names: Sequence[str]) -> None:
    """Rename the exporter's symbols (``s77``) to ours (``batch``) everywhere they appear."""
    inputs = {vi.name: vi for vi in model.graph.input}
    renames: dict[str, str] = {}
    for d in dims:
        i, axis = d.sites[0]
        dim = inputs[input_names[i]].type.tensor_type.shape.dim[axis]
        if not dim.HasField("dim_param"):
            raise EmitError(f"dim {axis} of input {input_names[i]!r} ({d.name}) came out static in the ONNX model")
        renames[dim.dim_param] = d.name
    if not renames:
        return
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(renames, key=len, reverse=True))) + r")\b")
    for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in vi.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_param = pattern.sub(lambda m: renames[m.group(1)], dim.dim_param)


def dim_names(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Each graph input/output's shape, with names for symbolic dims."""
    out = {}
    for vi in [*model.graph.input, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in dims]
    return out
