"""Emit ONNX from the rewritten graph, with every dynamic dim named.

The graph arrives as an ExportedProgram (:mod:`fxtrt.frontend.program` made it: rebuilt from the
symbolic capture, or exported again over the generalised graph); torch.onnx translates it, the
op set is converted down where asked, and the dims get the settings' names.
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
from fxtrt.backend.recurrent import TRANSLATIONS as RECURRENT_TRANSLATIONS
from fxtrt.backend.recurrent import recurrent_notes
from fxtrt.backend.translate import translate
from fxtrt.errors import EmitError
from fxtrt.frontend.captured import CapturedGraph
from fxtrt.frontend.source import source_of
from fxtrt.settings import DynamicDim
from fxtrt.backend.weights import Weights
from fxtrt.torch_log import collect_torch_log

log = logging.getLogger(__name__)

# torch.onnx's lowest native opset; lower ones are converted afterwards.
EXPORTER_OPSET = 18
LAYER_NORMS = frozenset({torch.ops.aten.layer_norm.default, torch.ops.aten.native_layer_norm.default})


@dataclass
class Emitted:
    model: onnx.ModelProto | None
    notes: list[str]

    def take_model(self) -> onnx.ModelProto:
        """The model, handed over: cleanup then holds the only reference, so the emitted weights
        are freed as soon as it has made its own."""
        model, self.model = self.model, None
        assert model is not None, "the emitted model was already handed over"
        return model


def layer_norm_decompositions() -> dict:
    """LayerNorm into primitive ops (opset < 17 has no LayerNormalization): ``layer_norm`` into
    ``native_layer_norm``, and that into mean, variance and arithmetic."""
    return {torch.ops.aten.layer_norm.default: torch.export.default_decompositions()[torch.ops.aten.layer_norm.default],
            torch.ops.aten.native_layer_norm.default:
                torch._decomp.decomposition_table[torch.ops.aten.native_layer_norm.default]}


def has_layer_norm(gm: torch.fx.GraphModule) -> bool:
    return any(n.op == "call_function" and n.target in LAYER_NORMS for n in gm.graph.nodes)


def emit_onnx(ep: torch.export.ExportedProgram, captured: CapturedGraph, dims: Sequence[DynamicDim],
              opset: int, weights: Weights | None = None) -> Emitted:
    """ONNX for ``ep`` (:func:`fxtrt.frontend.program.exported`) with the dims in ``dims``
    symbolic, named as in the settings. With ``weights``, the large initializers are stubs whose
    tensors go there (:mod:`fxtrt.backend.weights`), for a caller that writes the model with them."""
    gm = ep.graph_module
    notes: list[str] = recurrent_notes(gm)
    extra: dict = {}
    if opset < 17 and has_layer_norm(gm):
        notes.append(
            f"the model has LayerNorm but opset={opset} < 17: LayerNorm was decomposed into primitive ops; "
            "the seed recommends opset >= 17 with TensorRT >= 8.6.1"
        )
        extra = layer_norm_decompositions()
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), collect_torch_log():
            warnings.simplefilter("ignore")
            proto = translate(ep, opset=max(opset, EXPORTER_OPSET), input_names=captured.input_names,
                              output_names=captured.output_names, extra_decompositions=extra,
                              custom=RECURRENT_TRANSLATIONS,  # fxtrt::lstm/gru/rnn -> ONNX LSTM/GRU/RNN
                              weights=weights)
    except Exception as exc:
        raise translation_error(exc, ep, max(opset, EXPORTER_OPSET)) from exc
    if weights is not None and opset < 17:  # ONNX's C++ converter reads the whole model
        weights.materialize(proto)
    model = convert_opset(proto, opset, in_place=True)  # the proto is ours: no second copy of the weights
    _name_dims(model, dims, captured.input_names)
    return Emitted(model, notes)


# torch.onnx's error text: the op it found no translation for, and the FX node it was translating.
_NO_FUNCTION = re.compile(r"No ONNX function found for <OpOverload\(op='(?P<op>[\w.]+)', overload='(?P<overload>\w+)'\)>"
                          r"(?:\. Failure message: (?P<why>[^\n]*))?")
_FAILED_NODE = re.compile(r"Error when translating node %(?P<node>\w+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def translation_error(exc: Exception, ep: torch.export.ExportedProgram, opset: int) -> EmitError:
    """torch.onnx's failure as an EmitError that names the torch op and the user's line.

    torch.onnx words a missing translation as a multi-paragraph ConversionError whose first line
    is generic; the op and the FX node are named in its summary.
    """
    text = _ANSI.sub("", "\n".join(str(e) for e in _chain(exc)))
    missing = _NO_FUNCTION.search(text)
    failed = _FAILED_NODE.search(text)
    target = f"{missing['op']}.{missing['overload']}" if missing else None
    node = _graph_node(ep, failed["node"] if failed else None, target, opset)
    source = source_of(node) if node is not None else None
    if missing:
        why = f" ({missing['why'].strip().rstrip('.')})" if missing["why"] else ""
        return EmitError(
            f"torch.onnx has no ONNX translation of {target} at opset {opset}{why}",
            node=node.name if node is not None else (failed["node"] if failed else None), source=source,
            hint="rewrite that line with torch ops torch.onnx translates, or keep it out of the compiled model",
        )
    summary = [ln.strip() for ln in text.splitlines() if ln.startswith("<class ")]
    detail = summary[0] if summary else (text.strip().splitlines() or [type(exc).__name__])[0]
    return EmitError(
        f"torch.onnx could not translate the graph to ONNX: {type(exc).__name__}: {detail}",
        node=failed["node"] if failed else None, source=source,
        hint="please report this with the model",
    )


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes: torch.onnx's translator names the node outermost and the op in a cause."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _graph_node(ep: torch.export.ExportedProgram, name: str | None, target: str | None,
                opset: int) -> torch.fx.Node | None:
    """The FX node torch.onnx failed on, by name or else the first node calling ``target``.

    torch.onnx translates a copy of the program decomposed with its own registry (``special_zeta``
    becomes ``prims.zeta``), so a node missing from ``ep`` is looked for again after the same
    decompositions, whose nodes keep their ``stack_trace``. That goes through torch.onnx's private
    helpers and runs only on this failure path; if they change, only the source line is lost.
    """
    def find(graph: torch.fx.Graph) -> torch.fx.Node | None:
        nodes = [n for n in graph.nodes if n.op == "call_function"]
        if target is not None:  # a name alone may belong to another op in this copy of the graph
            nodes = [n for n in nodes if str(n.target) == target]
            return next((n for n in nodes if n.name == name), nodes[0] if nodes else None)
        return next((n for n in nodes if n.name == name), None)

    found = find(ep.graph)
    if found is None and (name or target):
        try:
            from torch.onnx._internal.exporter import _fx_passes, _registration

            registry = _registration.ONNXRegistry.from_torchlib(opset)
            found = find(_fx_passes.decompose_with_registry(ep, registry).graph)
        except Exception:  # noqa: BLE001 - the error is reported without its source line
            log.debug("could not decompose the program as torch.onnx does to find %s", name or target, exc_info=True)
    return found


_SYMBOL = re.compile(r"\b[a-z]+\d+\b")


def _name_dims(model: onnx.ModelProto, dims: Sequence[DynamicDim], input_names: Sequence[str]) -> None:
    """Rename the exporter's symbols to ours everywhere they appear: ``s77`` -> ``batch``; for a
    dim with a step, its input dim ``32*s6`` -> ``h`` and the symbol elsewhere -> ``(h/32)``."""
    inputs = {vi.name: vi for vi in model.graph.input}
    whole: dict[str, str] = {}
    symbols: dict[str, str] = {}
    for d in dims:
        for i, axis in d.sites:  # every site: torch may give sites declared equal their own symbols
            dim = inputs[input_names[i]].type.tensor_type.shape.dim[axis]
            if not dim.HasField("dim_param"):
                raise EmitError(f"dim {axis} of input {input_names[i]!r} ({d.name}) came out static in the ONNX model")
            found = _SYMBOL.findall(dim.dim_param)
            whole[dim.dim_param] = d.name
            if len(found) == 1:
                symbols[found[0]] = d.name if dim.dim_param == found[0] else f"({d.name}/{d.step or 1})"
    for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in vi.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                p = dim.dim_param
                dim.dim_param = whole.get(p) or _SYMBOL.sub(lambda m: symbols.get(m.group(0), m.group(0)), p)


def dim_names(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Each graph input/output's shape, with names for symbolic dims."""
    out = {}
    for vi in [*model.graph.input, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in dims]
    return out
