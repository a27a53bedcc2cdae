"""torch.onnx's translator on a program decomposed once: the one module that uses torch.onnx's private API.

``torch.onnx.export(ep)`` builds the torchlib registry, decomposes the program with the table of
ops that registry cannot translate (one retrace of the whole graph), inserts type promotions and
translates. fxtrt calls those steps itself so that:

- the registry, with fxtrt's recurrent translations in it, is built once per process and opset,
  not once per model (~0.3 s each time);
- an extra decomposition fxtrt needs (LayerNorm below opset 17) joins the one retrace instead of
  adding a second one before torch.onnx's own;
- the steps' times are fxtrt's to report.

The private names are the pinned torch's (``torch/onnx/_internal/exporter``). If any is missing
(another torch), :func:`translate` falls back to the public ``torch.onnx.export(ep)``, which gives
the same bytes for the same program without an extra table (``tests/backend/test_translate.py``
checks that, and every torch upgrade runs it), at the cost of its own registry; with an extra
table it decomposes first with torch's default table (a second retrace, and other ops).

Example::

    model = translate(ep, opset=18, input_names=["x"], output_names=["y"],
                      custom=RECURRENT_TRANSLATIONS, extra_decompositions={})
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Mapping, Sequence

import onnx
import torch

from fxtrt.backend.onnx_optimize import optimize
from fxtrt.backend.weights import Weights, serialize_aside

log = logging.getLogger(__name__)

Table = Mapping[Callable, Callable]


def _private() -> object | None:
    """torch.onnx's exporter internals, or None when this torch does not have them as pinned."""
    try:
        from torch.onnx._internal.exporter import _core, _decomp, _fx_passes, _ir_passes, _registration
    except ImportError:
        return None
    needed = [(_core, "_exported_program_to_onnx_program"), (_decomp, "get_onnx_implemented_overloads"),
              (_decomp, "create_onnx_friendly_decomposition_table"), (_fx_passes, "insert_type_promotion_nodes"),
              (_fx_passes, "remove_assertion_nodes"), (_ir_passes, "rename_inputs"), (_ir_passes, "rename_outputs"),
              (_registration.ONNXRegistry, "from_torchlib"), (_core, "onnxscript_apis")]
    if not all(hasattr(owner, name) for owner, name in needed):
        return None
    return _Internals(_core, _decomp, _fx_passes, _ir_passes, _registration)


class _Internals:
    def __init__(self, core: object, decomp: object, fx_passes: object, ir_passes: object, registration: object) -> None:
        self.core, self.decomp, self.fx_passes, self.ir_passes, self.registration = (
            core, decomp, fx_passes, ir_passes, registration)


@functools.lru_cache(maxsize=None)
def _registry(opset: int, custom: tuple[tuple[Callable, Callable], ...]) -> tuple[object, dict]:
    """The torchlib registry at ``opset`` with ``custom`` registered, and its decomposition table.

    Built once per process and (opset, custom table): both are read-only afterwards (torch.onnx
    only looks ops up in them), so a memo is not shared mutable state.
    """
    api = _private()
    assert api is not None
    registry = api.registration.ONNXRegistry.from_torchlib(opset_version=opset)
    for torch_op, onnx_op in custom:
        registry.register_op(torch_op, onnx_op, is_complex=False)
    implemented = set(api.decomp.get_onnx_implemented_overloads(registry))
    return registry, api.decomp.create_onnx_friendly_decomposition_table(implemented)


def private_path_available() -> bool:
    return _private() is not None


def translate(ep: torch.export.ExportedProgram, *, opset: int, input_names: Sequence[str],
              output_names: Sequence[str], custom: Table, extra_decompositions: Table,
              public: bool = False, weights: Weights | None = None) -> onnx.ModelProto:
    """ONNX for ``ep`` at ``opset`` (torch.onnx's native opsets, 18 and up), decomposed once with
    torch.onnx's table plus ``extra_decompositions``; ``public=True`` (or a torch without the
    private entry points) takes the public ``torch.onnx.export`` instead. With ``weights``, the
    large initializers are stubs in the result and their tensors go there (:mod:`.weights`)."""
    if public or not private_path_available():
        program = _public(ep, opset, input_names, output_names, custom, extra_decompositions)
        return program.model_proto if weights is None else serialize_aside(program.model, weights)
    api = _private()
    registry, table = _registry(opset, tuple(custom.items()))
    with torch.fx.experimental._config.patch(backed_size_oblivious=True):  # as torch.onnx prepares a program
        decomposed = ep.run_decompositions({**table, **extra_decompositions})
        gm = decomposed.graph_module
        api.fx_passes.insert_type_promotion_nodes(gm)
        decomposed._graph_module = api.fx_passes.remove_assertion_nodes(gm)
    program = api.core._exported_program_to_onnx_program(decomposed, registry=registry)
    program.model = api.core.onnxscript_apis.convert_version(program.model, opset)  # as torch.onnx does
    optimize(program.model, every_rule=_past_protobuf(ep))
    api.ir_passes.rename_inputs(program.model, list(input_names))
    api.ir_passes.rename_outputs(program.model, list(output_names))
    return program.model_proto if weights is None else serialize_aside(program.model, weights)


def _public(ep: torch.export.ExportedProgram, opset: int, input_names: Sequence[str], output_names: Sequence[str],
            custom: Table, extra: Table) -> Any:
    if extra:  # the public exporter takes no extra table: decompose first (it retraces once more itself)
        table = torch.export.default_decompositions()
        table.update(extra)
        ep = ep.run_decompositions(table)
    program = torch.onnx.export(
        ep, (), dynamo=True, opset_version=opset, input_names=list(input_names), output_names=list(output_names),
        optimize=False, verbose=False, external_data=True, custom_translation_table=dict(custom),
    )
    optimize(program.model, every_rule=_past_protobuf(ep))
    return program


def _past_protobuf(ep: torch.export.ExportedProgram) -> bool:
    """The program's weights pass protobuf's 2 GB: onnxsim will not see the model."""
    tensors = [*ep.state_dict.values(), *ep.constants.values()]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor)) >= 2 * 1024**3
