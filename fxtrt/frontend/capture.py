"""Capture the model with torch.export: symbolically first, by trace diffing only where it bakes.

1. One torch.export over exactly the declared range of every dynamic dim (a named ``Dim``; a dim
   with a step is ``step * Dim``). Wherever the model computes sizes from tensor shapes they stay
   symbolic and exact: conv and stride arithmetic, floor division, products of dims (YOLO's
   (H/32)·(W/32) anchors). For a clean model this is the only trace.
2. When torch.export reports a constraint violation, its suggested fixes say what the model does
   with each dim: a dim it specialises to a constant is baked in (``int(x.size(0))``); a narrower
   range is either a limit the model sets (BERT's 128 positions: ``ConfigError``) or torch's 0/1
   rule at the low end (a size inside the model that must not be 1), which is traced from the
   narrower range and verified from the declared min.
3. Baked dims alone are traced at concrete grid sizes, two per dim at every corner plus one check
   trace, with every other dim still symbolic; ``generalize_batch`` turns the literals that
   followed them into expressions and confirms each against the check trace.

Each trace becomes a flat GraphModule: positional tensors in, a flat tuple out, weights as
attributes. Every trace starts from the model's state before compile (``ModuleState``).
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.fx
import torch.utils._pytree as pytree

from fxtrt.errors import CaptureError, ConfigError, GeneralizationError
from fxtrt.frontend.bind import output_names
from fxtrt.frontend.export import (Violation, dim_reason, dynamic_shapes, eager_failure, export_once, first_lines,
                                   suggested_fixes, torch_dims)
from fxtrt.frontend.guards import check_deferred_asserts
from fxtrt.frontend.inputs import diff_sizes, grid_sizes, inputs_at, symbolic_size
from fxtrt.frontend.state import ModuleState
from fxtrt.settings import DynamicDim, Settings

log = logging.getLogger(__name__)

SYMBOLIC = "symbolic from capture"
TRACE_DIFF = "generalised by trace diff"


@dataclass(frozen=True)
class DimCapture:
    """How one dynamic dim was captured, and the range torch.export traced it over."""

    name: str
    how: str
    low: int
    high: int
    why: str = ""
    sizes: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"how": self.how, "traced_range": [self.low, self.high]}
        if self.why:
            out["why"] = self.why
        if self.sizes:
            out["trace_sizes"] = list(self.sizes)
        return out


@dataclass
class Capture:
    """One trace of the model: symbolic in some dims, at the concrete ``sizes`` in the others."""

    sizes: dict[str, int]
    gm: torch.fx.GraphModule
    inputs: tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class Program:
    """What emission needs from the symbolic export to turn the graph back into an
    ExportedProgram without tracing it again."""

    range_constraints: dict[Any, Any]
    verifiers: list[Any]


@dataclass
class CapturedGraph:
    """What the frontend learned: the traces, how each dim was captured, the output structure."""

    captures: list[Capture]
    out_spec: pytree.TreeSpec
    example: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dims: dict[str, DimCapture] = field(default_factory=dict)
    checks: list[Capture] = field(default_factory=list)
    program: Program | None = None
    notes: list[str] = field(default_factory=list)
    exports: int = 1

    @property
    def base(self) -> Capture:
        return self.captures[0]

    @property
    def baked(self) -> list[str]:
        """Dims the symbolic capture could not keep: the ones trace diffing generalises."""
        return [n for n, d in self.dims.items() if d.how == TRACE_DIFF]

    @property
    def symbolic(self) -> bool:
        """Every dynamic dim is symbolic in the base trace: it can be emitted as captured."""
        return not self.baked

    def traced_low(self) -> dict[str, int]:
        return {n: d.low for n, d in self.dims.items()}


def static_size(size: Any) -> int | None:
    """``size`` as an int if it is one at every size (a plain int or a constant SymInt)."""
    if isinstance(size, int):
        return size
    if isinstance(size, torch.SymInt):
        from torch.fx.experimental.symbolic_shapes import is_concrete_int

        return int(size) if is_concrete_int(size) else None
    return None


def dynamic_axes(shapes: Sequence[Sequence[Any]]) -> list[int]:
    """Axes of a value that change with the dynamic dims, from its shape in every trace: the
    axes that hold a symbol, or (for baked dims) differ between the traces."""
    return [d for d in range(len(shapes[0]))
            if any(static_size(s[d]) is None for s in shapes) or len({static_size(s[d]) for s in shapes}) > 1]


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


class _Capturer:
    """One capture run: the state it restores, the ranges it has learned, the traces it took."""

    def __init__(self, model: torch.nn.Module, example: tuple[torch.Tensor, ...], settings: Settings,
                 state: ModuleState) -> None:
        self.model, self.example, self.settings, self.state = model, example, settings, state
        self.dims = settings.dims
        self.by_name = {d.name: d for d in self.dims}
        self.sizes: dict[str, int] = {}
        for d in self.dims:
            s = symbolic_size(d)
            if s is None:
                raise ConfigError(f"dynamic dim '{d.name}' range {d.min}..{d.max} (grid {d.grid}) has no size >= 2 "
                                  "to trace at", hint="widen the range, or make the dim static")
            self.sizes[d.name] = s
        self.ranges = {d.name: (d.min, d.max) for d in self.dims}
        self.baked: dict[str, str] = {}
        self.notes: list[str] = []
        self.exports = 0

    def export(self, sizes: Mapping[str, int]) -> torch.export.ExportedProgram:
        self.state.restore()
        self.model.eval()
        named = torch_dims(self.dims, {n: r for n, r in self.ranges.items() if n not in self.baked})
        spec = dynamic_shapes(len(self.example), self.dims, named) if named else None
        inputs = inputs_at(self.example, self.dims, sizes)
        log.debug("capturing at %s, symbolic in %s", dict(sizes), sorted(named))
        self.exports += 1
        return export_once(self.model, inputs, spec)

    def symbolic(self) -> torch.export.ExportedProgram:
        """The symbolic capture, refined by torch's suggested fixes until it holds."""
        for _ in range(2 * len(self.dims) + 1):
            try:
                return self.export(self._trace_sizes())
            except Violation as violation:
                self._apply(violation)
        raise CaptureError("torch.export kept reporting constraint violations after fxtrt applied its fixes",
                           hint="run fxtrt explain on the model to see where sizes are baked in")

    def _trace_sizes(self) -> dict[str, int]:
        sizes = dict(self.sizes)
        for name in self.baked:
            sizes[name] = self._diff_sizes(self.by_name[name])[0]
        return sizes

    def _diff_sizes(self, d: DynamicDim) -> list[int]:
        sizes = diff_sizes(d)
        if len(sizes) < 3:
            raise GeneralizationError(
                f"the model bakes dim '{d.name}' into the graph, and its range {d.min}..{d.max} (grid {d.grid}) "
                f"has too few sizes to fit and check an expression for it ({sizes})",
                hint="widen the range, give a smaller step, or make the dim static",
            )
        return sizes

    def _apply(self, violation: Violation) -> None:
        fixes = suggested_fixes(violation, self.dims)
        progress = False
        for d in self.dims:
            fix = fixes.get(d.name)
            if fix is None or d.name in self.baked:
                continue
            if isinstance(fix, int):
                self.baked[d.name] = dim_reason(violation.message, d)
                log.info("dim '%s' is baked into the graph (%s); it is generalised by trace diffing", d.name,
                         self.baked[d.name])
                progress = True
                continue
            lo, hi = self.ranges[d.name]
            new_lo = lo if fix[0] is None else max(lo, fix[0])
            new_hi = hi if fix[1] is None else min(hi, fix[1])
            if new_hi < hi:
                raise self._limit(d, new_lo, new_hi, "max")
            if new_lo > lo:
                self._low_limit(d, new_lo, new_hi)
                progress = True
        if not progress:
            raise CaptureError(f"torch.export could not keep the dynamic dims: {first_lines(violation.message)}",
                               hint="run fxtrt explain on the model to see where sizes are baked in")

    def _low_limit(self, d: DynamicDim, new_lo: int, hi: int) -> None:
        """torch.export proves the graph only from ``new_lo``: if the model runs eagerly at the
        declared min the graph is traced from ``new_lo`` and verified from min; else it is the
        model's own limit."""
        at_min = {**self.sizes, d.name: d.min}
        self.state.restore()
        failure = eager_failure(self.model, inputs_at(self.example, self.dims, at_min))
        self.state.restore()
        if failure is not None:
            raise self._limit(d, new_lo, hi, "min", d.min, failure)
        self.ranges[d.name] = (new_lo, hi)
        if self.sizes[d.name] < new_lo:
            self.sizes[d.name] = next(iter(grid_sizes(d, new_lo)))
        self.notes.append(
            f"torch.export traces dim '{d.name}' only from {new_lo} (it assumes sizes inside the model are never 1); "
            f"the model runs at {d.min}, so the graph serves {d.min}..{d.max} and is verified at {d.min} and in between"
        )

    def _limit(self, d: DynamicDim, lo: int, hi: int, end: str, probe: int | None = None,
               failure: tuple[str, str | None] | None = None) -> ConfigError:
        """ConfigError: the model itself limits the dim; name the range that works and the line."""
        if probe is None:
            probe = next(iter(grid_sizes(d, hi + 1)), d.max)
        if failure is None:
            self.state.restore()
            failure = eager_failure(self.model, inputs_at(self.example, self.dims, {**self.sizes, d.name: probe}))
            self.state.restore()
        asked = f"{d.min}..{d.max}"
        if failure is not None:
            message, source = failure
            what = f"at {d.name}={probe} the model fails: {message}"
        else:
            source = None
            what = f"torch.export proves one graph for {lo}..{hi} only (the model runs at {probe}, but its graph changes)"
        fix = f"max={hi}" if end == "max" else f"min={lo}"
        return ConfigError(
            f"dynamic dim '{d.name}' works only for {lo}..{hi} in this model, not {asked}: {what}",
            source=source,
            hint=f"ask for {d.name} within {lo}..{hi} ({fix}); the limit is the model's, not a baked size",
        )

    def diff_points(self) -> tuple[list[dict[str, int]], dict[str, int]]:
        """Every corner of the baked dims' first two diff sizes, and the check point (third sizes)."""
        baked = [self.by_name[n] for n in self.baked]
        sizes = [self._diff_sizes(d) for d in baked]
        corners = [{**self.sizes, **{d.name: s for d, s in zip(baked, corner)}}
                   for corner in itertools.product(*[s[:2] for s in sizes])]
        check = {**self.sizes, **{d.name: s[2] for d, s in zip(baked, sizes)}}
        return corners, check

    def dim_records(self) -> dict[str, DimCapture]:
        out = {}
        for d in self.dims:
            lo, hi = self.ranges[d.name]
            if d.name in self.baked:
                out[d.name] = DimCapture(d.name, TRACE_DIFF, d.min, d.max, self.baked[d.name],
                                         tuple(self._diff_sizes(d)))
            else:
                out[d.name] = DimCapture(d.name, SYMBOLIC, lo, hi)
        return out


def capture(model: torch.nn.Module, example: tuple[torch.Tensor, ...], settings: Settings) -> CapturedGraph:
    """Capture ``model`` symbolically over the declared ranges, diffing traces only for baked dims.

    The model is left as it was found: attributes, parameters, buffers and training flag.
    """
    state = ModuleState(model)
    notes: list[str] = []
    if model.training:
        notes.append("the model was in train mode; fxtrt compiled it in eval mode")
    try:
        run = _Capturer(model, example, settings, state)
        ep = run.symbolic()
        sizes = run._trace_sizes()
        checked = check_deferred_asserts(ep, [d for d in settings.dims if d.name not in run.baked])
        if checked.note():
            notes.append(checked.note())
        for name, low in checked.lows.items():
            run._low_limit(run.by_name[name], low, run.ranges[name][1])
        captures = [Capture(sizes, _flat_module(ep), inputs_at(example, settings.dims, sizes))]
        checks: list[Capture] = []
        program = Program(dict(ep.range_constraints), list(ep.verifiers)) if not run.baked else None
        if run.baked:
            corners, check = run.diff_points()
            for point in corners[1:]:
                captures.append(Capture(point, _flat_module(run.export(point)), inputs_at(example, settings.dims, point)))
            checks.append(Capture(check, _flat_module(run.export(check)), inputs_at(example, settings.dims, check)))
        out_spec = ep.call_spec.out_spec
    except Violation as violation:  # a trace at other baked sizes hit a new constraint
        raise CaptureError(f"torch.export could not keep the dynamic dims: {first_lines(violation.message)}",
                           hint="run fxtrt explain on the model to see where sizes are baked in") from None
    finally:
        state.restore()
    notes += run.notes
    return CapturedGraph(captures, out_spec, example, settings.input_names, output_names(out_spec),
                         dims=run.dim_records(), checks=checks, program=program, notes=notes, exports=run.exports)


def flatten_outputs(outputs: Any) -> list[Any]:
    return pytree.tree_leaves(outputs)
