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
from typing import Any, Mapping, Sequence

import torch
import torch.fx
import torch.utils._pytree as pytree

from fxtrt.errors import CaptureError, ConfigError, GeneralizationError, StructureError
from fxtrt.frontend.bind import output_names
from fxtrt.frontend.export import (SolverFailure, Violation, dim_reason, dynamic_shapes, export_once, first_lines,
                                   proven_relations, suggested_fixes, torch_dims)
from fxtrt.frontend.guards import Hole, check_deferred_asserts
from fxtrt.frontend.captured import (SYMBOLIC, TRACE_DIFF, Capture, CapturedGraph, DimCapture, Program, dynamic_axes,
                                     static_size)
from fxtrt.frontend.higher_order import lower_higher_order
from fxtrt.frontend.limits import Limits
from fxtrt.frontend.recurrent import recurrent_ops
from fxtrt.frontend.state import ModuleState
from fxtrt.settings import DynamicDim, Settings, merge_dims
from fxtrt.sizes import diff_sizes, grid_sizes, inputs_at, symbolic_size

log = logging.getLogger(__name__)

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


class _Capturer(Limits):
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
        self.auto = False  # the solver failed: every trace uses Dim.DYNAMIC, the ranges read back

    def export(self, sizes: Mapping[str, int], widen: bool = False, auto: bool = False,
               limits: bool = True) -> torch.export.ExportedProgram:
        self.state.restore()
        self.model.eval()
        ranges = {n: r for n, r in self.ranges.items() if n not in self.baked}
        if widen:  # a graph torch proves for a wider range holds in the declared one
            ranges = {n: (lo, hi + max(hi - lo, 8) * (self.by_name[n].step or 1)) for n, (lo, hi) in ranges.items()}
        named = torch_dims(self.dims, ranges, auto=auto or self.auto)
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
        auto = self._auto(failure)
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
        its low end, handled as ever), else None (a dim specialised or cut short, or a dim with a
        step, which Dim.DYNAMIC cannot express)."""
        if any(d.step for d in self.dims):
            return None
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
        self.auto = True
        return ep

    def _bake_for_solver(self, failure: SolverFailure) -> torch.export.ExportedProgram:
        """Still failing: the first dim (batch last) without which the solver succeeds, or without
        which the others capture with ``Dim.DYNAMIC`` (a batch a per-sample loop specialises keeps
        the Dim.DYNAMIC capture from reading the others back), is baked and generalised by trace
        diffing, like a dim torch specialises."""
        for d in sorted((d for d in self.dims if d.name not in self.baked), key=lambda d: d.is_batch):
            self.baked[d.name] = f"torch.export's constraint solver fails with '{d.name}' symbolic"
            try:
                ep = self.export(self._trace_sizes())
            except SolverFailure as again:
                auto = self._auto(again)
                if auto is None:
                    del self.baked[d.name]
                    continue
                ep = auto
            except Violation:
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


# The records live in ``captured``; they are named here too, where callers have always found them.
__all__ = ["SYMBOLIC", "TRACE_DIFF", "Capture", "CapturedGraph", "DimCapture", "Program", "capture", "dynamic_axes",
           "flatten_outputs", "static_size"]
