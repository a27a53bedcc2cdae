"""Clean the emitted ONNX with onnxsim alone, on the graph without the weights it cannot fold.

torch.onnx's optimizer has already folded constants and removed unused nodes when the model gets
here; onnxsim (its own shape inference, folding and fusions) does the rest. A shape inference and
a GraphSurgeon fold before it gave the same graph at twice the time on the fidelity benchmark's
models, so they are not run (``benchmarks/results/2026-12-05-cleanup/``). Most of onnxsim's time
and memory is the weights going to C++ and back (0.5 s and four copies of resnet50's 100 MB), so
weights that only feed a Conv or MatMul with an activation go in as typed inputs and come back
after (:func:`_foldable_weights`): 0.06 s on resnet50. That gives up onnxsim's MatMul+Add → Gemm
fusion, which on a dynamic sequence wraps each Gemm in computed Reshapes (bert: 220 → 253 nodes,
44 → 74 shape ops, for ~1.3% ONNX Runtime latency). Models whose weights pass protobuf's 2 GB
cannot go through onnxsim; GraphSurgeon folds those. Last, :mod:`fxtrt.backend.onnxruntime.tune`
rewrites the few patterns ONNX Runtime's CPU provider runs slowly (issue 19's BERT case:
``benchmarks/results/2026-12-05-latency/profile-issue-bert.md``).

Symbolic dims must survive: onnxsim is run without fixed input shapes, and
:func:`fxtrt.backend.dynamic_dims.check_dynamic_dims` verifies the dims afterwards.
"""
from __future__ import annotations

import collections
import contextlib
import io
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from fxtrt.backend.emit import dim_names
from fxtrt.backend.onnxruntime.tune import tune_for_onnxruntime
from fxtrt.backend.protowire import copy_fields
from fxtrt.backend.shape_inference import weightless
from fxtrt.backend.stream_write import write_model
from fxtrt.backend.weights import Weights
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


def cleanup(model: onnx.ModelProto, *, size_limit: int = PROTOBUF_LIMIT, tune: bool = True,
            weights: Weights | None = None) -> Cleaned:
    """Fold and simplify ``model``, which is consumed (its weights move into the result). Models
    whose weights pass ``size_limit`` skip the steps that serialise to protobuf; ``tune=False``
    leaves out the rewrites for ONNX Runtime; ``weights`` holds the tensors of the model's stubs
    (:mod:`.weights`), of which the ones onnxsim may fold are made real."""
    weights = weights if weights is not None else Weights()
    before = op_counts(model)
    provenance = {n.name: list(n.metadata_props) for n in model.graph.node if n.name and n.metadata_props}
    notes: list[str] = []
    if _weight_bytes(model) >= size_limit:  # onnxsim serialises the model: past 2 GB, GraphSurgeon folds instead
        import onnx_graphsurgeon as gs  # heavy import; only for such models

        weights.materialize(model)  # GraphSurgeon reads every weight

        graph = gs.import_onnx(model)
        with contextlib.redirect_stdout(io.StringIO()):
            graph.fold_constants(error_ok=True).cleanup(remove_unused_graph_inputs=False).toposort()
        model = gs.export_onnx(graph, do_type_check=False)
        notes.append("the model is over 2 GB: onnxsim was skipped and weights are saved as external data")
    else:
        model = _simplify(model, notes, weights)
    if tune:  # ORT's CPU kernels: GELU fused, no SkipLayerNorm, one transpose for the key
        notes += tune_for_onnxruntime(model).notes
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


def _simplify(model: onnx.ModelProto, notes: list[str], weights: Weights) -> onnx.ModelProto:
    import onnxsim

    keep = _foldable_weights(model.graph)
    weights.materialize(model, keep)  # what onnxsim may fold it must read
    light, n_inputs = weightless(model, keep=keep)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            simplified, ok = onnxsim.simplify(light, check_n=0, certify=False)
    except Exception as exc:  # onnxsim is best effort: the unsimplified model is still valid
        notes.append(f"onnxsim failed and was skipped: {type(exc).__name__}: {str(exc)[:200]}")
        log.warning("onnxsim failed: %s", exc)
        return model
    if not ok:
        notes.append("onnxsim could not validate its result; the unsimplified model was kept")
        return model
    stripped = {i.name for i in list(light.graph.input)[n_inputs:]}
    return _with_weights(simplified, model, stripped) if stripped else simplified


def _foldable_weights(graph: onnx.GraphProto) -> set[str]:
    """Initializers onnxsim may fold: read by a node whose every input is constant (a Gather of
    gate rows, a Transpose of a table), or from inside a subgraph. The others feed a Conv or a
    MatMul with an activation, which nothing folds, so onnxsim gets their types and shapes only."""
    constant = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    keep: set[str] = set()
    for node in graph.node:
        if all(i in constant for i in node.input if i):
            keep.update(i for i in node.input if i)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                keep.update(i for n in sub.node for i in n.input)
    return keep


def _with_weights(simplified: onnx.ModelProto, original: onnx.ModelProto, stripped: set[str]) -> onnx.ModelProto:
    """onnxsim's graph in ``original``, whose weights stay where they are (moved, not copied: a
    copy would hold the model's weights twice); onnxsim's own initializers follow them, and a
    weight no node reads any more is dropped. ``original`` is consumed."""
    used = {i for n in simplified.graph.node for i in n.input} | {o.name for o in simplified.graph.output}
    graph = original.graph
    for i in reversed(range(len(graph.initializer))):  # in place, keeping the order of the ones kept
        if graph.initializer[i].name not in stripped or graph.initializer[i].name not in used:
            del graph.initializer[i]
    for field in [f.name for f, _ in graph.ListFields() if f.name != "initializer"]:
        graph.ClearField(field)
    for field in [f.name for f, _ in original.ListFields() if f.name != "graph"]:
        original.ClearField(field)
    copy_fields(simplified, original, lambda f: f.name != "graph")
    copy_fields(simplified.graph, graph, lambda f: f.name != "initializer")
    graph.initializer.extend(simplified.graph.initializer)
    inputs = [i for i in graph.input if i.name not in stripped]
    del graph.input[:]
    graph.input.extend(inputs)
    return original


def save_onnx(model: onnx.ModelProto, path: Path, threshold: int = PROTOBUF_LIMIT,
              weights: Weights | None = None) -> None:
    """Models past ``threshold`` bytes keep their weights in ``<name>.data`` beside the file;
    ``weights`` holds the tensors of the model's stubs (:mod:`.weights`), written in their place.

    The size is the weights' (``ByteSize`` would walk the model once more than saving does); the
    threshold's default leaves 64 MB for the graph itself below protobuf's 2 GB.
    """
    if _weight_bytes(model) < threshold:
        try:
            write_model(model, path, weights)  # the real model's bytes, one weight held at a time
            return
        except ValueError:  # past protobuf's limit after all: the weights go beside it
            log.debug("the model does not serialise in one piece; saving its weights beside it", exc_info=True)
    if weights is not None:
        weights.materialize(model)  # past 2 GB: onnx writes the external data from the proto
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)


def _weight_bytes(model: onnx.ModelProto) -> int:
    """The initializers' bytes from their types and shapes, without serialising anything."""
    total = 0
    for t in model.graph.initializer:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize if t.data_type else 1
        total += math.prod(t.dims) * itemsize
    return total


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
