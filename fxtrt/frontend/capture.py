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

import dataclasses
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.fx
import torch.utils._pytree as pytree

from fxtrt.errors import CaptureError, ConfigError, GeneralizationError, StructureError
from fxtrt.frontend.bind import output_names
from fxtrt.frontend.export import (SolverFailure, Violation, dim_reason, dynamic_shapes, eager_failure, export_once, first_lines,
                                   proven_relations, suggested_fixes, torch_dims)
from fxtrt.frontend.guards import Hole, check_deferred_asserts, check_hole_runs
from fxtrt.frontend.higher_order import lower_higher_order
from fxtrt.frontend.inputs import diff_sizes, grid_sizes, inputs_at, symbolic_size
from fxtrt.frontend.recurrent import recurrent_ops
from fxtrt.frontend.state import ModuleState
from fxtrt.settings import DynamicDim, Settings, merge_dims

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
    holes: tuple[Hole, ...] = ()  # facts torch assumed that fail inside the ranges (verified there)
    pristine: torch.fx.GraphModule | None = None  # the base trace before the passes ran (for diagnosis)
    declared: tuple[DynamicDim, ...] = ()  # the dims as captured: the settings' dims, with dims torch proves equal merged

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
    gm = torch.fx.GraphModule(unlifted, graph)  # copies get_attr targets: weights and subgraphs alike
    gm.graph.lint()
    return lower_higher_order(gm)  # no_grad / autocast regions inlined, map as scan, the rest refused


def _distinct(dims: Sequence[DynamicDim], sizes: Mapping[str, int]) -> dict[str, int]:
    """``sizes`` with no two dims at one size: a dim whose size another already has moves to the
    nearest free size on its grid (never 0 or 1); where there is none it keeps its own."""
    out: dict[str, int] = {}
    for d in dims:
        size = sizes[d.name]
        if size in out.values():
            free = [g for g in itertools.islice(grid_sizes(d, 2), 0, 256) if g not in out.values()]
            size = min(free, key=lambda g: (abs(g - size), g)) if free else size
        out[d.name] = size
    return out


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
        # Independent dims traced at one size let torch derive facts of that size only (a square
        # example "proves" H == W through a reshape): trace them at distinct sizes, and at the
        # example's only where the model cannot run otherwise (dims that really are one size).
        self.given = dict(self.sizes)
        self.sizes = _distinct(self.dims, self.sizes)
        self.ranges = {d.name: (d.min, d.max) for d in self.dims}
        self.baked: dict[str, str] = {}
        self.moved: set[str] = set()  # dims traced at another size after torch specialised them at theirs
        self.beyond: list[Hole] = []  # ranges past torch.export's proof, verified there
        self.notes: list[str] = []
        self.exports = 0

    def export(self, sizes: Mapping[str, int], widen: bool = False, auto: bool = False,
               limits: bool = True) -> torch.export.ExportedProgram:
        self.state.restore()
        self.model.eval()
        ranges = {n: r for n, r in self.ranges.items() if n not in self.baked}
        if widen:  # a graph torch proves for a wider range holds in the declared one
            ranges = {n: (lo, hi + max(hi - lo, 8) * (self.by_name[n].step or 1)) for n, (lo, hi) in ranges.items()}
        named = torch_dims(self.dims, ranges, auto=auto)
        spec = dynamic_shapes(len(self.example), self.dims, named) if named else None
        inputs = inputs_at(self.example, self.dims, sizes)
        log.debug("capturing at %s, symbolic in %s", dict(sizes), sorted(named))
        self.exports += 1
        try:
            return export_once(self.model, inputs, spec)
        except (Violation, SolverFailure):
            raise
        except CaptureError as exc:
            raise (self._model_limit(sizes) if limits else None) or exc

    def _model_limit(self, sizes: Mapping[str, int]) -> ConfigError | None:
        """A trace failed: if the model itself fails once one dim leaves its example size (a
        Linear's feature dim declared dynamic), that dim's limit is the model's: a ConfigError
        with the sizes around the example where it runs."""
        for d in self.dims:
            size = sizes.get(d.name, d.example)
            if d.is_batch or size == d.example:
                continue
            failure = self._eager_at(d, size)
            if failure is None:
                continue
            works = [d.example]
            for step in (1, -1):  # the grid sizes next to the example where the model runs, a few each way
                grid = [g for g in grid_sizes(d) if (g - d.example) * step > 0][::step][:4]
                for g in grid:
                    if self._eager_at(d, g) is not None:
                        break
                    works.append(g)
            lo, hi = min(works), max(works)
            message, source = failure
            if lo == hi:
                hint = f"the model needs '{d.name}' to be {lo}: leave it out of the dynamic dims"
            else:
                hint = f"ask for '{d.name}' within {lo}..{hi}; the limit is the model's, not a baked size"
            return ConfigError(f"dynamic dim '{d.name}' works only for {lo}..{hi} in this model, not {d.min}..{d.max}: "
                               f"at {d.name}={size} the model fails: {message}", source=source, hint=hint)
        return None

    def _eager_at(self, d: DynamicDim, size: int) -> tuple[str, str | None] | None:
        self.state.restore()
        try:
            return eager_failure(self.model, inputs_at(self.example, self.dims, {d.name: size}))
        finally:
            self.state.restore()

    def symbolic(self) -> torch.export.ExportedProgram:
        """The symbolic capture, refined by torch's suggested fixes until it holds."""
        distinct = self.sizes != self.given  # the first try is at distinct sizes; the example's is the fallback
        for _ in range(3 * len(self.dims) + 2):
            try:
                return self.export(self._trace_sizes(), limits=not distinct)
            except Violation as violation:
                self._apply(violation)
            except SolverFailure as failure:
                return self._widened(failure)
            except CaptureError:
                if not distinct:
                    raise
                log.debug("the model does not run with its dims at distinct sizes %s; traced at %s", self.sizes,
                          self.given)
                self.sizes, distinct = {**self.sizes, **self.given}, False
        raise CaptureError("torch.export kept reporting constraint violations after fxtrt applied its fixes",
                           hint="run fxtrt explain on the model to see where sizes are baked in")

    def _widened(self, failure: SolverFailure) -> torch.export.ExportedProgram:
        """torch's solver fails over some ranges and at some trace sizes (``Dim`` with min == max,
        "expected an equality constraint"): the capture with ``Dim.DYNAMIC``, then over wider
        ranges, then traced at the next grid sizes of every dim (a size where no crop is a no-op). Deferred asserts are still checked over the
        declared ranges, and the graph is verified over them."""
        auto = self._auto(failure) if not any(d.step for d in self.dims) else None
        if auto is not None:
            return auto

        def shifted(k: int) -> dict[str, int]:  # every dim at its k-th grid size after its trace size
            out = {}
            for d in self.dims:
                size = self.sizes[d.name]
                later = list(itertools.islice(grid_sizes(d, size + 1), k))
                earlier = [s for s in grid_sizes(d, 2) if s < size]
                out[d.name] = later[k - 1] if len(later) == k else (earlier[-k] if len(earlier) >= k else size)
            return out

        attempts = [(self.sizes, True), (shifted(1), False), (shifted(1), True), (shifted(2), False), (shifted(3), False)]
        for sizes, widen in attempts:
            try:
                ep = self.export({**self._trace_sizes(), **{k: v for k, v in sizes.items() if k not in self.baked}},
                                 widen=widen)
            except Exception:
                continue
            self.sizes = {**self.sizes, **{k: v for k, v in sizes.items() if k not in self.baked}}
            self.notes.append(f"torch.export's constraint solver failed at the first trace, so the graph was captured "
                              f"{'over wider ranges ' if widen else ''}at {self.sizes} (it holds in the declared "
                              "ranges too)")
            return ep
        return self._bake_for_solver(failure)

    def _auto(self, failure: SolverFailure) -> torch.export.ExportedProgram | None:
        """The capture with ``Dim.DYNAMIC``, which never runs the failing solver; what torch made
        of each dim is then read off the graph: the declared range kept (or torch's 0/1 rule at
        its low end, handled as ever), else None (a dim specialised or cut short)."""
        try:
            ep = self.export(self._trace_sizes(), auto=True)
        except Exception:
            return None
        user = set(ep.graph_signature.user_inputs)
        shapes = [n.meta["val"].shape for n in ep.graph.nodes if n.op == "placeholder" and n.name in user]
        lows: dict[str, int] = {}
        for d in self.dims:
            if d.name in self.baked:
                continue
            for i, axis in d.sites:
                size = shapes[i][axis]
                if not isinstance(size, torch.SymInt) or size.node.expr not in ep.range_constraints:
                    return None
                r = ep.range_constraints[size.node.expr]
                if int(r.upper) < self.ranges[d.name][1] or int(r.lower) > max(self.ranges[d.name][0], 2):
                    return None
                lows[d.name] = max(lows.get(d.name, 0), int(r.lower))
        for name, low in lows.items():
            if low > self.ranges[name][0]:
                self._low_limit(self.by_name[name], low, self.ranges[name][1])
        self.notes.append(f"torch.export's constraint solver failed ({failure.message.split(': ', 1)[-1][:120]}), "
                          "so the graph was captured with Dim.DYNAMIC and its ranges read back from the graph")
        return ep

    def _bake_for_solver(self, failure: SolverFailure) -> torch.export.ExportedProgram:
        """Still failing: the first dim (batch last) without which the solver succeeds is baked and
        generalised by trace diffing, like a dim torch specialises."""
        for d in sorted((d for d in self.dims if d.name not in self.baked), key=lambda d: d.is_batch):
            self.baked[d.name] = f"torch.export's constraint solver fails with '{d.name}' symbolic"
            try:
                ep = self.export(self._trace_sizes())
            except (SolverFailure, Violation):
                del self.baked[d.name]
                continue
            log.info("dim '%s' is baked into the graph (%s); it is generalised by trace diffing", d.name,
                     self.baked[d.name])
            return ep
        raise failure

    def _trace_sizes(self) -> dict[str, int]:
        sizes = dict(self.sizes)
        for name in self.baked:
            sizes[name] = self._diff_sizes(self.by_name[name])[0]
        return sizes

    def _diff_sizes(self, d: DynamicDim) -> list[int]:
        sizes = diff_sizes(d)
        if len(sizes) < 3:
            error = StructureError if d.is_batch else GeneralizationError  # the batch still has buckets
            raise error(
                f"the model bakes dim '{d.name}' into the graph, and its range {d.min}..{d.max} (grid {d.grid}) "
                f"has too few sizes to fit and check an expression for it ({sizes})",
                hint="widen the range, give a smaller step, or make the dim static",
            )
        return sizes

    def _apply(self, violation: Violation) -> None:
        relations = proven_relations(violation.message, self.dims)
        if relations:
            raise _Related(relations)
        fixes = suggested_fixes(violation, self.dims)
        progress = False
        for d in self.dims:
            fix = fixes.get(d.name)
            if fix is None or d.name in self.baked:
                continue
            if isinstance(fix, int) and fix == self.sizes[d.name] and not d.is_batch and d.name not in self.moved:
                # specialised to the size it was traced at: often a fact of that size only (a pad
                # to a multiple of 4 that is 0 there); traced at the next grid size first (not the
                # batch, which int(x.size(0)) bakes at every size)
                later = [g for g in grid_sizes(d, fix + 1)][:1] or [g for g in grid_sizes(d, 2) if g < fix][-1:]
                self.moved.add(d.name)
                if later:
                    self.sizes[d.name] = later[0]
                    progress = True
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
                self._beyond_proof(d, new_lo, new_hi, hi)
                progress = True
                continue
            if new_lo > lo:
                self._low_limit(d, new_lo, new_hi)
                progress = True
        if not progress:
            raise CaptureError(f"torch.export could not keep the dynamic dims: {first_lines(violation.message)}",
                               hint="run fxtrt explain on the model to see where sizes are baked in")

    def _beyond_proof(self, d: DynamicDim, lo: int, proven: int, hi: int) -> None:
        """torch.export proves one graph only up to ``proven`` (a slice end clamped by a static
        size, say), yet ONNX may serve past it. Where the model runs eagerly past it, the graph is
        traced over ``lo..proven`` and verified past the proof (every grid size past it, up to
        64; else the boundary, the max and 8 between): a :class:`Hole` that names the first size
        where the artifact differs. Where the model itself fails past it, that is its limit."""
        past = list(grid_sizes(d, proven + 1))
        if not past:
            raise self._limit(d, lo, proven, "max")
        if len(past) > 64:
            step = (len(past) - 1) / 9
            past = sorted({past[0], past[1], past[-1], *(past[round(k * step)] for k in range(1, 9))})
        for size in past:
            self.state.restore()
            failure = eager_failure(self.model, inputs_at(self.example, self.dims, {**self.sizes, d.name: size}))
            self.state.restore()
            if failure is not None:
                served = max([proven] + [s for s in past if s < size])
                if served == proven:
                    raise self._limit(d, lo, proven, "max", probe=size, failure=failure)
                raise self._limit(d, lo, served, "max", probe=size, failure=failure)
        self.ranges[d.name] = (self.ranges[d.name][0], proven)
        points = tuple({d.name: s} for s in past)
        self.beyond.append(Hole(f"the graph it proves for '{d.name}' in {lo}..{proven} also serves {proven + 1}.."
                                f"{hi}", None, points, beyond=(d.name, d.min, proven)))
        shown = ", ".join(str(s) for s in past[:12]) + (", ..." if len(past) > 12 else "")
        self.notes.append(f"torch.export proves one graph for dim '{d.name}' only for {lo}..{proven}; the model runs "
                          f"past it, so the graph is verified beyond torch.export's proof at {d.name}={shown}")

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

    def runs_at(self, hole: Hole) -> None:
        self.state.restore()
        try:
            check_hole_runs(self.model, self.example, self.dims, hole)
        finally:
            self.state.restore()

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


class _Related(Exception):
    """torch.export proves declared dims related: capture again with equal ones merged."""

    def __init__(self, relations: list[tuple[str, str, str]]) -> None:
        super().__init__(relations)
        self.relations = relations


def capture(model: torch.nn.Module, example: tuple[torch.Tensor, ...], settings: Settings) -> CapturedGraph:
    """Capture ``model`` symbolically over the declared ranges, diffing traces only for baked dims.

    Declared dims are independent; where torch.export proves two of them equal (a speech
    encoder's ``x: BxTx80`` and ``mask: Bx1xT``), they are merged into one symbol and the capture
    runs again (``CapturedGraph.declared`` holds the dims as captured). Any other relation between
    two declared dims is a ConfigError naming it. The model is left as it was found: attributes,
    parameters, buffers and training flag.
    """
    merged: list[str] = []
    for _ in range(len(settings.dims) + 1):
        try:
            with recurrent_ops(model):  # LSTM/GRU/RNN as one op each: the sequence stays symbolic
                captured = _capture(model, example, settings)
        except _Related as related:
            for a, b, relation in related.relations:
                if relation != "==":
                    raise ConfigError(
                        f"the model ties dynamic dims '{a}' and '{b}' together ({relation}), so they cannot vary "
                        "independently as declared", hint=f"declare only '{b}' dynamic, or make '{a}' static") from None
            for a, b, _rel in related.relations:
                names = {d.name for d in settings.dims}
                if a in names and b in names and a != b:
                    settings = dataclasses.replace(settings, dims=merge_dims(settings.dims, a, b, settings.input_names))
                    merged.append(f"{a} == {b}")
            continue
        if merged:
            captured.notes.insert(0, f"torch.export proves {', '.join(merged)}: each such pair is one dynamic dim, "
                                     f"{', '.join(d.name for d in settings.dims)}")
        return captured
    raise CaptureError("torch.export kept relating the declared dims after fxtrt merged the equal ones",
                       hint="give dims that must be equal one name")


def _capture(model: torch.nn.Module, example: tuple[torch.Tensor, ...], settings: Settings) -> CapturedGraph:
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
        for hole in checked.holes:
            run.runs_at(hole)
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
                         dims=run.dim_records(), checks=checks, program=program, notes=notes, exports=run.exports,
                         holes=checked.holes + tuple(run.beyond), declared=settings.dims)


def flatten_outputs(outputs: Any) -> list[Any]:
    return pytree.tree_leaves(outputs)
