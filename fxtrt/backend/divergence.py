"""Layer-wise divergence: the first ONNX node whose value leaves the FX graph's.

Polygraphy's ``--onnx-outputs mark all`` shows every intermediate of an ONNX model; this does
the same (``ModifyOutputs(MARK_ALL)``), runs the FX graph that was emitted on the same inputs,
and pairs values by name: torch.onnx names each ONNX value after the FX node that computed it
(``view`` → ``view``), and keeps that node's stack trace in the ONNX node's metadata. Walking the
ONNX graph in order, the first paired value that differs is where the ONNX model went wrong,
and its FX node's stack trace is the user's line.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import torch
import torch.fx

from fxtrt.backend.onnxruntime import SessionLoader, onnxrt_runner
from fxtrt.compare import compare_arrays, compare_tensors, onnx_feed, onnx_inputs, tensor_array
from fxtrt.frontend.capture import CapturedGraph
from fxtrt.frontend.source import onnx_node_source, source_of
from fxtrt.graph import node_values
from fxtrt.settings import Settings
from fxtrt.sizes import inputs_at, verification_points

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Divergence:
    """Where the ONNX model first disagrees with the FX graph it was emitted from."""

    onnx_node: str
    op_type: str
    value: str
    fx_node: str | None
    source: str | None
    max_abs: float
    max_ref: float
    compared: int

    def describe(self) -> str:
        fx = f", FX node {self.fx_node}" if self.fx_node else ""
        at = f" at {self.source}" if self.source else ""
        return (f"first divergence: ONNX node {self.onnx_node} ({self.op_type}) output {self.value!r}{fx}{at}: "
                f"max |onnx - fx| = {self.max_abs:.3g} (max |fx| = {self.max_ref:.3g}); "
                f"{self.compared} paired values compared")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def onnx_values(model_path: Path, feed: Mapping[str, np.ndarray]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Every intermediate value of the ONNX model, marked as an output with Polygraphy."""
    from polygraphy import constants
    from polygraphy.backend.onnx import ModifyOutputs, onnx_from_path
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
        model = onnx_from_path(str(model_path))
        marked = ModifyOutputs(model, outputs=constants.MARK_ALL, copy=True)()
        with onnxrt_runner(SessionLoader(marked)) as runner:
            outputs = runner.infer(dict(feed))
    # a sequence-typed value (SplitToSequence inside an ultralytics RT-DETR) is no tensor to compare
    return model, {k: v for k, v in outputs.items() if isinstance(v, np.ndarray)}


def find_divergence(
    model_path: Path,
    gm: torch.fx.GraphModule,
    inputs: Sequence[torch.Tensor],
    feed: Mapping[str, np.ndarray],
    atol: float,
    rtol: float,
) -> Divergence | None:
    """The first ONNX node (in graph order) whose output differs from its FX node's value.

    A value differs when ``max|a - b| > atol + rtol * max|fx|``: the one rule of
    :mod:`fxtrt.compare`, judged per tensor, so ordinary rounding spread over a large tensor is
    not mistaken for the divergence.
    """
    model, got = onnx_values(model_path, feed)
    want = node_values(gm, inputs)
    by_name = {n.name: n for n in gm.graph.nodes}
    # Graph outputs carry the ONNX output names ("output"), not the FX node's; pair them by position.
    fx_outputs = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    for vi, fx_node in zip(model.graph.output, fx_outputs):
        if isinstance(fx_node, torch.fx.Node) and fx_node.name in want:
            want[vi.name] = want[fx_node.name]
            by_name[vi.name] = fx_node
    compared = 0
    for node in model.graph.node:
        for value in node.output:
            if value not in got or value not in want:
                continue
            ref = tensor_array(want[value])
            out = got[value]
            if tuple(ref.shape) != tuple(out.shape):
                continue
            compared += 1
            c = compare_arrays(ref, out, atol, rtol, per_tensor=True)
            if not c.passed:
                fx_node = by_name.get(value)
                source = (source_of(fx_node) if fx_node is not None else None) or onnx_node_source(node)
                return Divergence(node.name, node.op_type, value, fx_node.name if fx_node is not None else None,
                                  source, c.max_abs, c.peak, compared)
    log.info("no ONNX value diverges from the FX graph (%d paired values compared)", compared)
    return None


def trace_divergence(gm: torch.fx.GraphModule, onnx_path: Path, captured: CapturedGraph, settings: Settings,
                     sizes: Mapping[str, int] | None = None) -> Divergence | None:
    """:func:`find_divergence` at ``sizes`` (default: the first verification point), on the
    example resized to them: where the emitted ONNX model first leaves the FX graph."""
    sizes = sizes if sizes is not None else verification_points(settings.dims, captured.traced_low())[0]
    inputs = inputs_at(captured.example, settings.dims, sizes)
    feed = onnx_feed(captured.input_names, inputs)
    return find_divergence(onnx_path, gm, onnx_inputs(inputs), feed, settings.atol, settings.rtol)


@dataclass(frozen=True)
class GraphVerdict:
    """No ONNX value leaves the FX graph: then the FX graph itself differs from the model, and
    which stage made it differ is found by running the graph before the passes (torch.export's)
    and after them against the model at the failing sizes, never assumed."""

    captured_matches: bool | None  # None: the capture was traced at fixed sizes and can't run there
    final_matches: bool
    sizes: dict[str, int]
    onnx_node: None = None
    source: None = None

    def describe(self) -> str:
        at = ",".join(f"{k}={v}" for k, v in self.sizes.items()) or "the example's sizes"
        head = f"no ONNX value differs from the FX graph it was emitted from; at {at}"
        if self.final_matches:
            return f"{head} that graph matches the model too, so the difference is in how the artifact is run or rounded"
        if self.captured_matches is None:
            return (f"{head} that graph differs from the model; torch.export traced it at other sizes, so this run "
                    "cannot tell whether the capture or a pass made it differ")
        if self.captured_matches:
            return f"{head} the graph torch.export captured matches the model, and after the passes it does not: a pass changed it"
        return f"{head} the graph torch.export captured already differs from the model, before any pass ran"

    @property
    def hint(self) -> str:
        if self.captured_matches and not self.final_matches:
            return "run with debug_dir=... to see which pass, with its numeric check after each one"
        if self.captured_matches is False:
            return "torch.export's graph is wrong at these sizes; narrow the range or give the dim a step"
        return "run with debug_dir=... to compare the graph with the model after capture and after each pass"

    def to_dict(self) -> dict[str, Any]:
        return {"result": self.describe(), "captured_matches": self.captured_matches,
                "final_matches": self.final_matches, "sizes": self.sizes}


def graph_verdict(model: torch.nn.Module, gm: torch.fx.GraphModule, captured: CapturedGraph, settings: Settings,
                  sizes: Mapping[str, int]) -> GraphVerdict:
    """Run the model, the captured graph (when symbolic) and the final graph at ``sizes``."""
    import torch.utils._pytree as pytree

    inputs = inputs_at(captured.example, settings.dims, sizes)
    fx_inputs = onnx_inputs(inputs)

    def same(graph: torch.fx.GraphModule) -> bool:  # at the inputs bound when it is called
        with torch.no_grad():
            want = [t for t in pytree.tree_leaves(model(*inputs)) if isinstance(t, torch.Tensor)]
            try:
                got = [t for t in pytree.tree_leaves(graph(*fx_inputs)) if isinstance(t, torch.Tensor)]
            except Exception:  # the captured graph's own runtime asserts: it does not hold there
                return False
        return len(got) == len(want) and all(
            g.shape == w.shape and compare_tensors(w, g, settings.atol, settings.rtol).passed for g, w in zip(got, want))

    if captured.pristine is None:
        return GraphVerdict(None, same(gm), dict(sizes))
    if captured.symbolic:
        return GraphVerdict(same(captured.pristine), same(gm), dict(sizes))
    # Traced at fixed sizes: the captured graph runs only at its own, so both are compared there.
    final = same(gm)
    inputs = inputs_at(captured.example, settings.dims, captured.base.sizes)
    fx_inputs = onnx_inputs(inputs)
    if not final and same(captured.pristine) and not same(gm):
        return GraphVerdict(True, False, dict(captured.base.sizes))
    return GraphVerdict(None, final, dict(sizes))
