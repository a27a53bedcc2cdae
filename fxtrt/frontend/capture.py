"""Capture the model with torch.export at concrete sizes.

The batch-generalisation pass compares the same model traced at several sizes, so the
frontend traces it once per corner of the grid of dynamic dims (2 sizes each: 2**k traces).
Each trace becomes a flat GraphModule: positional tensors in, a flat tuple out, weights as
attributes, so later stages need no pytree or ExportedProgram plumbing.
"""
from __future__ import annotations

import itertools
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.utils._pytree as pytree

from fxtrt.errors import CaptureError, GeneralizationError
from fxtrt.frontend.inputs import capture_sizes, inputs_at
from fxtrt.frontend.source import location_of_traceback
from fxtrt.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Capture:
    """One trace of the model at one point of the dynamic-dim grid."""

    sizes: dict[str, int]
    gm: torch.fx.GraphModule
    inputs: tuple[torch.Tensor, ...]


@dataclass
class CapturedGraph:
    """What the frontend learned: the traces, the output structure and the example."""

    captures: list[Capture]
    out_spec: pytree.TreeSpec
    example: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    notes: list[str] = field(default_factory=list)

    @property
    def base(self) -> Capture:
        return self.captures[0]


def _flat_module(ep: torch.export.ExportedProgram) -> torch.fx.GraphModule:
    """The exported program as a plain GraphModule with flat inputs and a flat tuple output."""
    unlifted = ep.module()
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    for node in unlifted.graph.nodes:
        # The unlifted module calls a guard function that pins every input shape; it is not
        # part of the computation.
        if node.op == "call_module" and str(node.target).startswith("_guards"):
            continue
        if node.op == "output":
            graph.output(tuple(env[a] for a in pytree.tree_leaves(node.args[0])))
            continue
        env[node] = graph.node_copy(node, lambda n: env[n])
    gm = torch.fx.GraphModule(unlifted, graph)
    gm.graph.lint()
    return gm


def _describe_failure(exc: BaseException) -> tuple[str, str | None]:
    loc = location_of_traceback(exc.__traceback__)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return first, str(loc) if loc else None


_DATA_DEPENDENT = ("data-dependent", "data dependent", "GuardOnDataDependentSymNode", "unbacked")


def export_once(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    """torch.export (non-strict) with failures turned into fxtrt errors at the user's line."""
    try:
        return torch.export.export(model, inputs, strict=False)
    except Exception as exc:  # torch.export raises many unrelated types
        message, source = _describe_failure(exc)
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
        if any(k in f"{type(exc).__name__} {exc}" for k in _DATA_DEPENDENT):
            raise GeneralizationError(
                f"the model's shapes depend on tensor values (e.g. .item() or .tolist()): {message}",
                source=source,
                hint="compute sizes from x.shape instead of from tensor values, or keep that input static",
            ) from exc
        raise CaptureError(
            f"torch.export could not capture the model at input shapes {shapes}: {type(exc).__name__}: {message}",
            source=source,
            hint="check that the model runs eagerly at these shapes; fxtrt traces it at sizes other than the example's",
        ) from exc


def capture(model: torch.nn.Module, example: tuple[torch.Tensor, ...], settings: Settings) -> CapturedGraph:
    """Trace ``model`` at every corner of the dynamic-dim grid (just the example if static)."""
    notes: list[str] = []
    was_training = model.training
    if was_training:
        notes.append("the model was in train mode; fxtrt compiled it in eval mode")
    model.eval()
    try:
        grid = [capture_sizes(d) for d in settings.dims]
        captures = []
        out_spec = None
        for corner in itertools.product(*grid) if grid else [()]:
            sizes = {d.name: s for d, s in zip(settings.dims, corner)}
            inputs = inputs_at(example, settings.dims, sizes)
            log.debug("capturing at %s", sizes or "the example's shapes")
            # Grad mode stays on: under no_grad, nn.MultiheadAttention and TransformerEncoderLayer
            # take fused fast paths (_native_multi_head_attention) that ONNX cannot express.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ep = export_once(model, inputs)
            for w in {str(w.message) for w in caught}:
                log.debug("torch.export: %s", w)
            out_spec = ep.call_spec.out_spec
            captures.append(Capture(sizes, _flat_module(ep), inputs))
    finally:
        model.train(was_training)
    n_out = out_spec.num_leaves if out_spec is not None else 1
    output_names = ("output",) if n_out == 1 else tuple(f"output_{i}" for i in range(n_out))
    return CapturedGraph(captures, out_spec, example, settings.input_names, output_names, notes)


def flatten_outputs(outputs: Any) -> list[Any]:
    return pytree.tree_leaves(outputs)
