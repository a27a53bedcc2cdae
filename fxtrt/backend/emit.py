"""Emit ONNX from the rewritten GraphModule, with every dynamic dim named.

A graph from a symbolic capture is handed to torch.onnx as it is: turned back into an
ExportedProgram (weights lifted to inputs, the capture's symbols and ranges kept), with no
second torch.export. A graph whose baked dims were generalised computes those sizes from
``sym_size`` of its inputs, so torch.export over the traced ranges captures it symbolically; a
dim that still got specialised means a size was baked in, and is an error here rather than a
silently static model.
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
import torch.utils._pytree as pytree

from fxtrt.backend.opset import convert_opset
from fxtrt.backend.recurrent import TRANSLATIONS as RECURRENT_TRANSLATIONS
from fxtrt.backend.recurrent import recurrent_notes
from fxtrt.errors import EmitError, GeneralizationError
from fxtrt.frontend.capture import CapturedGraph, Program
from fxtrt.frontend.export import dynamic_shapes, torch_dims
from fxtrt.frontend.guards import AssertCheck, Hole, check_deferred_asserts
from fxtrt.frontend.source import location_of_traceback, source_of
from fxtrt.settings import DynamicDim
from fxtrt.torch_log import collect_torch_log

log = logging.getLogger(__name__)

# torch.onnx's lowest native opset; lower ones are converted afterwards.
EXPORTER_OPSET = 18
LAYER_NORMS = frozenset({torch.ops.aten.layer_norm.default, torch.ops.aten.native_layer_norm.default})


@dataclass
class Emitted:
    model: onnx.ModelProto
    notes: list[str]
    holes: tuple[Hole, ...] = ()  # facts the re-export assumed that fail inside the ranges


def has_layer_norm(gm: torch.fx.GraphModule) -> bool:
    return any(n.op == "call_function" and n.target in LAYER_NORMS for n in gm.graph.nodes)


def exported_program(gm: torch.fx.GraphModule, program: Program) -> torch.export.ExportedProgram:
    """``gm`` (flat inputs, weights as attributes) as an ExportedProgram over ``program``'s
    symbols, with every weight lifted to an input as torch.export would have made it. The
    subgraphs of higher-order ops (``cond``'s branches, a ``scan``'s body) stay attributes of the
    root, as torch.export leaves them, and torch.onnx translates those ops to If / Scan / Loop.

    Placeholders get fake values from the weights as they are now (a pass may have changed a
    buffer's dtype), and float64 inputs become float32, as the ONNX inputs will be.
    """
    from torch.export.exported_program import ModuleCallEntry, ModuleCallSignature
    from torch.export.graph_signature import (
        ExportGraphSignature, InputKind, InputSpec, OutputKind, OutputSpec, TensorArgument,
    )

    user = [n for n in gm.graph.nodes if n.op == "placeholder"]
    fake_mode = next(n.meta["val"].fake_mode for n in user if isinstance(n.meta.get("val"), torch.Tensor))
    params = {k for k, _ in gm.named_parameters(remove_duplicate=False)}
    buffers = {k for k, _ in gm.named_buffers(remove_duplicate=False)}
    prefix = {InputKind.PARAMETER: "p_", InputKind.BUFFER: "b_", InputKind.CONSTANT_TENSOR: "c_"}
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    lifted: dict[str, torch.fx.Node] = {}
    specs: list[InputSpec] = []
    state_dict: dict[str, torch.Tensor] = {}
    constants: dict[str, torch.Tensor] = {}
    for node in gm.graph.find_nodes(op="get_attr"):
        if node.target in lifted:
            continue
        value = _attr(gm, node.target)
        if isinstance(value, torch.fx.GraphModule):  # a branch or loop body: stays an attribute
            continue
        if not isinstance(value, torch.Tensor):
            raise EmitError(f"attribute {node.target} of the graph is a {type(value).__name__}, not a tensor",
                            node=node.name, hint="please report this with the model")
        kind = (InputKind.PARAMETER if node.target in params else
                InputKind.BUFFER if node.target in buffers else InputKind.CONSTANT_TENSOR)
        # FX writes a placeholder's target as a Python argument name: "block1-0" must not reach it.
        ph = graph.placeholder(prefix[kind] + re.sub(r"\W", "_", node.target))
        ph.target = ph.name
        ph.meta["val"] = fake_mode.from_tensor(value, static_shapes=True)
        lifted[node.target] = ph
        specs.append(InputSpec(kind, TensorArgument(ph.name), node.target,
                               persistent=True if kind == InputKind.BUFFER else None))
        (constants if kind == InputKind.CONSTANT_TENSOR else state_dict)[node.target] = value
    for node in user:
        env[node] = ph = graph.node_copy(node)
        ph.target = ph.name  # ExportedProgram looks placeholders up by name ("input" was renamed "input_1")
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and val.dtype == torch.float64:
            with fake_mode:
                ph.meta["val"] = val.to(torch.float32)
        specs.append(InputSpec(InputKind.USER_INPUT, TensorArgument(ph.name), None))
    outputs: list[OutputSpec] = []
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.target in lifted:
            env[node] = lifted[node.target]
        elif node.op == "output":
            outs = tuple(env[a] for a in node.args[0])
            graph.output(outs)
            outputs = [OutputSpec(OutputKind.USER_OUTPUT, TensorArgument(o.name), None) for o in outs]
        elif node.op != "placeholder":
            env[node] = graph.node_copy(node, lambda n: env[n])
    call = ModuleCallSignature(
        # as torch.export writes the root entry: no arguments (decompositions rename nodes, and
        # would leave names here dangling), the call structure and the argument names
        inputs=[], outputs=[],
        in_spec=pytree.tree_structure(((0,) * len(user), {})), out_spec=pytree.tree_structure((0,) * len(outputs)),
        forward_arg_names=[env[u].name for u in user],
    )
    return torch.export.ExportedProgram(
        root=gm, graph=graph, graph_signature=ExportGraphSignature(specs, outputs), state_dict=state_dict,
        range_constraints=dict(program.range_constraints), module_call_graph=[ModuleCallEntry("", call)],
        constants=constants, verifiers=list(program.verifiers),
    )


def _attr(gm: torch.nn.Module, target: str) -> object:
    obj: object = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _reexport(gm: torch.fx.GraphModule, inputs: Sequence[torch.Tensor], dims: Sequence[DynamicDim],
              captured: CapturedGraph) -> tuple[torch.export.ExportedProgram, AssertCheck]:
    """torch.export of the generalised graph over the traced ranges (the declared ones for baked
    dims), and its deferred asserts checked over them.

    Traced at the base size, torch may decide facts that hold there only (at an even length a
    crop ``[:s]`` of ``2*ceil(s/2)`` is a no-op) and specialise; the graph is the same function at
    every traced size, so each other trace's inputs get their turn before that is an error.
    """
    named = torch_dims(dims, {name: (c.low, c.high) for name, c in captured.dims.items()})
    spec = dynamic_shapes(len(inputs), dims, named) if dims else None
    tries = [tuple(inputs)] + [tuple(t.to(torch.float32) if t.dtype == torch.float64 else t for t in c.inputs)
                               for c in captured.captures[1:] + captured.checks]
    first_exc: Exception | None = None
    for args in tries:
        try:
            ep = torch.export.export(gm, args, dynamic_shapes=spec, strict=False,
                                     prefer_deferred_runtime_asserts_over_guards=spec is not None)
            return ep, check_deferred_asserts(ep, dims)
        except Exception as exc:
            first_exc = first_exc or exc
            log.debug("re-export at %s failed: %s", [tuple(a.shape) for a in args], str(exc)[:700])
            if spec is None or "Constraints violated" not in str(exc):
                break
    assert first_exc is not None
    exc = first_exc
    loc = location_of_traceback(exc.__traceback__)
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    guard = next((ln.strip(" -") for ln in str(exc).splitlines() if "guard" in ln and ln.strip() != first), "")
    raise GeneralizationError(
        f"the generalised graph does not trace with symbolic sizes: {type(exc).__name__}: {first}"
        + (f" ({guard})" if guard else ""),
        source=str(loc) if loc else None,
        hint="a size may still be baked in; run fxtrt explain on the model to see where",
    ) from exc


def emit_onnx(gm: torch.fx.GraphModule, captured: CapturedGraph, dims: Sequence[DynamicDim], opset: int) -> Emitted:
    """ONNX for ``gm`` with the dims in ``dims`` symbolic, named as in the settings."""
    notes: list[str] = recurrent_notes(gm)
    inputs = tuple(t.to(torch.float32) if t.dtype == torch.float64 else t for t in captured.base.inputs)
    holes: tuple[Hole, ...] = ()
    if captured.program is not None:
        ep = exported_program(gm, captured.program)
    else:
        ep, checked = _reexport(gm, inputs, dims, captured)
        holes = checked.holes
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
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), collect_torch_log():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                ep, inputs, dynamo=True, opset_version=max(opset, EXPORTER_OPSET),
                input_names=list(captured.input_names), output_names=list(captured.output_names),
                optimize=True, verbose=False, external_data=True,
                custom_translation_table=RECURRENT_TRANSLATIONS,  # fxtrt::lstm/gru/rnn -> ONNX LSTM/GRU/RNN
            )
    except Exception as exc:
        raise translation_error(exc, ep, max(opset, EXPORTER_OPSET)) from exc
    model = convert_opset(program.model_proto, opset)
    _name_dims(model, dims, captured.input_names)
    return Emitted(model, notes, holes)


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
    text = _ANSI.sub("", str(exc))
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
