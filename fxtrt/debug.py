"""Per-pass debugging: dumps of the graph after every pass, and a numeric check after each.

``compile(..., debug_dir=DIR)`` writes, for pass number NN:

    DIR/00_captured/graph.py        the trace as torch.export gave it
    DIR/NN_<pass>/graph.py          ``gm.code`` after the pass
    DIR/NN_<pass>/nodes.txt         one row per node: name, op, target, args, shape, user's file:line
    DIR/NN_<pass>/diff.patch        unified diff of graph.py against the previous step
    DIR/NN_<pass>/changes.json      the pass's change records
    DIR/torch_log.txt               what torch logged (or printed) during compile, if anything

and runs the rewritten GraphModule against the original model after every pass (Torch-TensorRT's
``validate_inference``, for every pass). The first pass that breaks the match stops the run
with a PassError naming the pass and the first diverging node.
"""
from __future__ import annotations

import copy
import difflib
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.fx
import torch.utils._pytree as pytree

from fxtrt.compare import compare_tensors, onnx_inputs
from fxtrt.errors import PassError
from fxtrt.frontend.capture import CapturedGraph
from fxtrt.frontend.source import source_of
from fxtrt.graph import node_values
from fxtrt.passes.infra import call_text, fmt
from fxtrt.passes.manager import PassEvent
from fxtrt.settings import Settings
from fxtrt.sizes import inputs_at, verification_sizes

log = logging.getLogger(__name__)


def node_table(gm: torch.fx.GraphModule) -> str:
    rows = [("name", "op", "target", "args", "shape", "source")]
    for n in gm.graph.nodes:
        val = n.meta.get("val")
        shape = str(list(val.shape)) if isinstance(val, torch.Tensor) else ""
        target = getattr(n.target, "__name__", str(n.target))
        args = fmt(list(n.args))[1:-1]
        rows.append((n.name, n.op, target, args if len(args) < 80 else args[:77] + "...", shape, source_of(n) or ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5] for r in rows) + "\n"


class PassDebugger:
    """A ``PassManager`` observer that dumps each step, and its ``check_step``, the numeric check the
    manager runs after each pass, against the original model."""

    def __init__(
        self,
        debug_dir: Path,
        model: torch.nn.Module,
        captured: CapturedGraph,
        settings: Settings,
        check: bool = True,
        pristine: torch.fx.GraphModule | None = None,
    ) -> None:
        self.dir = debug_dir
        self.model = model
        self.captured = captured
        self.settings = settings
        self.check = check
        # the caller's copy of the graph as captured, when it made one (the passes rewrite in place)
        self.pristine = pristine if pristine is not None else copy.deepcopy(captured.base.gm)
        self.generalized = not settings.dims
        self.ran: list[str] = []
        self._write_step("00_captured", self.pristine.code, "", [])

    def _write_step(self, folder: str, code: str, before: str, changes: list[dict[str, Any]],
                    gm: torch.fx.GraphModule | None = None) -> None:
        step = self.dir / folder
        step.mkdir(parents=True, exist_ok=True)
        (step / "graph.py").write_text(code)
        (step / "nodes.txt").write_text(node_table(gm or self.pristine))
        diff = difflib.unified_diff(before.splitlines(keepends=True), code.splitlines(keepends=True),
                                    fromfile="before/graph.py", tofile="after/graph.py")
        (step / "diff.patch").write_text("".join(diff))
        (step / "changes.json").write_text(json.dumps(changes, indent=2) + "\n")

    def __call__(self, event: PassEvent) -> None:
        if event.result is None:
            return
        gm = event.result.gm
        changes = [c.to_dict() for c in event.result.changes]
        self._write_step(f"{event.index + 1:02d}_{event.name}", gm.code, event.before, changes, gm)
        self.ran.append(event.name)
        if event.contract.generalizes:  # declared by the pass: from here on the graph serves every size
            self.generalized = True

    def check_step(self, event: PassEvent) -> None:
        """Torch-TensorRT's ``validate_inference`` for this step (after the dump, so it is on disk)."""
        if self.check and event.result is not None:
            self.check_pass(event.name, event.result.gm)

    def check_points(self) -> list[dict[str, int]]:
        """The base trace's sizes, plus (once sizes are symbolic) one size no trace used."""
        points = [dict(self.captured.base.sizes)]
        if self.generalized and self.settings.dims:
            first = self.settings.dims[0]
            used = {c.sizes[first.name] for c in self.captured.captures}
            other = next((s for s in reversed(verification_sizes(first)) if s not in used), None)
            if other is not None:
                points.append({**points[0], first.name: other})
        return points

    def check_pass(self, name: str, gm: torch.fx.GraphModule) -> None:
        for sizes in self.check_points():
            inputs = inputs_at(self.captured.example, self.settings.dims, sizes)
            with torch.no_grad():
                want = pytree.tree_leaves(self.model(*inputs))
                got = list(gm(*onnx_inputs(inputs)))
            bad = _first_mismatch(want, got, self.settings.atol, self.settings.rtol)
            if bad is None:
                continue
            node = self.first_diverging_node(gm)
            where = f"; first diverging node: {node.name} ({call_text(node)})" if node is not None else ""
            raise PassError(
                f"pass {name} broke the model: {bad} at sizes {sizes}{where}",
                node=node.name if node is not None else None,
                source=source_of(node) if node is not None else None,
                hint="passes that ran before it: " + (", ".join(self.ran[:-1]) or "none"),
            )

    def first_diverging_node(self, gm: torch.fx.GraphModule) -> torch.fx.Node | None:
        """Compare every node value with the untouched trace at the base sizes (the only sizes the
        untouched trace runs at); the first that differs."""
        sizes = dict(self.captured.base.sizes)
        inputs = onnx_inputs(inputs_at(self.captured.example, self.settings.dims, sizes))
        ref = node_values(self.pristine, inputs)
        got = node_values(gm, inputs)
        for node in gm.graph.nodes:
            if node.name in ref and node.name in got and node.op == "call_function":
                a, b = ref[node.name], got[node.name]
                if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape:
                    if _differs(a, b, self.settings.atol, self.settings.rtol):
                        return node
        # A node whose output changed shape or dtype is the other kind of divergence.
        for node in gm.graph.nodes:
            if node.name in ref and node.name in got and isinstance(ref[node.name], torch.Tensor):
                b = got[node.name]
                if isinstance(b, torch.Tensor) and b.shape != ref[node.name].shape:
                    return node
        return None


def _differs(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> bool:
    # a changed integer dtype must keep the values exactly; floats meet the one rule
    exact = a.dtype != b.dtype and not (a.is_floating_point() and b.is_floating_point())
    return not compare_tensors(a, b, atol, rtol, exact_integers=exact).passed


def _first_mismatch(want: Sequence[Any], got: Sequence[Any], atol: float, rtol: float) -> str | None:
    if len(want) != len(got):
        return f"{len(got)} outputs instead of {len(want)}"
    for i, (w, g) in enumerate(zip(want, got)):
        if not isinstance(w, torch.Tensor):
            continue
        if tuple(w.shape) != tuple(g.shape):
            return f"output {i} has shape {list(g.shape)} instead of {list(w.shape)}"
        if _differs(w, g, atol, rtol):
            err = (w.double() - g.double()).abs().max().item()
            return f"output {i} differs by up to {err:.3g}"
    return None
