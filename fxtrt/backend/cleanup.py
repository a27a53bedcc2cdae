"""Clean the emitted ONNX: shape inference, GraphSurgeon folding, then onnxsim.

Symbolic dims must survive: onnxsim is run without fixed input shapes, and
:func:`fxtrt.backend.dynamic_dims.check_dynamic_dims` verifies the dims afterwards.
"""
from __future__ import annotations

import collections
import contextlib
import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnx.shape_inference

from fxtrt.backend.emit import dim_names
from fxtrt.frontend.capture import CapturedGraph
from fxtrt.settings import Settings

log = logging.getLogger(__name__)

PROTOBUF_LIMIT = 2 * 1024**3


@dataclass
class Cleaned:
    model: onnx.ModelProto
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    notes: list[str] = field(default_factory=list)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(collections.Counter(n.op_type for n in model.graph.node).items()))


def cleanup(model: onnx.ModelProto, *, size_limit: int = PROTOBUF_LIMIT) -> Cleaned:
    """Fold and simplify. Models past ``size_limit`` skip the steps that serialise to protobuf."""
    import onnx_graphsurgeon as gs  # heavy import; only when cleaning

    before = op_counts(model)
    provenance = {n.name: list(n.metadata_props) for n in model.graph.node if n.name and n.metadata_props}
    notes: list[str] = []
    big = _byte_size(model) >= size_limit
    if not big:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    graph = gs.import_onnx(model)
    with contextlib.redirect_stdout(io.StringIO()):
        graph.fold_constants(error_ok=True).cleanup(remove_unused_graph_inputs=False).toposort()
    model = gs.export_onnx(graph, do_type_check=False)
    if big:
        notes.append("the model is over 2 GB: onnxsim was skipped and weights are saved as external data")
    else:
        model = _simplify(model, notes)
    _restore_provenance(model, provenance)
    return Cleaned(model, before, op_counts(model), notes)


def _restore_provenance(model: onnx.ModelProto, provenance: dict[str, list]) -> None:
    """torch.onnx records each node's FX node and stack trace; cleanup drops them; put them back.

    They are how an ONNX node is traced to the user's line (fp16 repair, divergence search).
    """
    for node in model.graph.node:
        if node.name in provenance and not node.metadata_props:
            node.metadata_props.extend(provenance[node.name])
    _stable_provenance(model.graph)


# torch numbers the code of every GraphModule it compiles in the process ("<eval_with_key>.126"),
# and that counter reaches the stack traces of subgraph nodes: without the number, one model and
# one set of options give the same bytes whatever ran before them in the process.
_EVAL_KEY = re.compile(r"<eval_with_key>\.\d+")


def _stable_provenance(graph: onnx.GraphProto) -> None:
    for node in graph.node:
        for prop in node.metadata_props:
            if "<eval_with_key>" in prop.value:
                prop.value = _EVAL_KEY.sub("<eval_with_key>", prop.value)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _stable_provenance(sub)


def _byte_size(model: onnx.ModelProto) -> int:
    try:
        return model.ByteSize()
    except Exception:  # protobuf refuses to size messages past 2 GB on some builds
        return PROTOBUF_LIMIT


def _simplify(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    import onnxsim

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            simplified, ok = onnxsim.simplify(model, check_n=0, certify=False)
    except Exception as exc:  # onnxsim is best effort: the unsimplified model is still valid
        notes.append(f"onnxsim failed and was skipped: {type(exc).__name__}: {str(exc)[:200]}")
        log.warning("onnxsim failed: %s", exc)
        return model
    if not ok:
        notes.append("onnxsim could not validate its result; the unsimplified model was kept")
        return model
    return simplified


def save_onnx(model: onnx.ModelProto, path: Path, threshold: int = PROTOBUF_LIMIT) -> None:
    """Models past ``threshold`` bytes keep their weights in ``<name>.data`` beside the file."""
    if _byte_size(model) >= threshold:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


def restore_dim_names(model: onnx.ModelProto, captured: CapturedGraph, settings: Settings) -> list[str]:
    """Give an input dim that shape inference or onnxsim renamed (``unk__0``) its name back,
    everywhere that name appears. The dim stayed symbolic; only its name was lost, and
    verification then checks that it serves every claimed size. A dim that became static is left
    for :func:`fxtrt.backend.dynamic_dims.check_dynamic_dims` to refuse."""
    shapes = dim_names(model)
    renames: dict[str, str] = {}
    for d in settings.dims:
        for i, axis in d.sites:
            got = shapes.get(captured.input_names[i], [None] * (axis + 1))[axis]
            if isinstance(got, str) and got and got != d.name and renames.get(got, d.name) == d.name:
                renames[got] = d.name
    if not renames:
        return []
    values = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    for value in values:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]
    return [f"cleanup renamed dim '{new}' to '{old}'; it was given its name back (verification checks it)"
            for old, new in sorted(renames.items())]
