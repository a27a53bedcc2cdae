"""Where a dynamic dim stops: the model's own limits, and ranges past torch.export's proof.

A mixin of the capture run (``capture._Capturer``): these methods decide, by running the model
eagerly, whether a narrower range torch.export proves is the model's limit (a ``ConfigError``
naming the range that works and the line), a range to verify past the proof (a ``Hole``), or
torch's 0/1 rule at the low end.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Mapping

from fxtrt.errors import ConfigError, GeneralizationError
from fxtrt.frontend.export import eager_failure
from fxtrt.frontend.guards import Hole, check_hole_runs, step_on_grid
from fxtrt.frontend.program import step_hint
from fxtrt.settings import DynamicDim
from fxtrt.sizes import grid_sizes, inputs_at

if TYPE_CHECKING:
    import torch

    from fxtrt.frontend.state import ModuleState

log = logging.getLogger(__name__)


class Limits:
    """The limit decisions of one capture run; the run holds the state they read and update."""

    model: "torch.nn.Module"
    example: tuple
    dims: tuple[DynamicDim, ...]
    sizes: dict[str, int]
    ranges: dict[str, tuple[int, int]]
    beyond: list[Hole]
    notes: list[str]
    state: "ModuleState"

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

    def _eager_at(self, d: DynamicDim, size: int, others: Mapping[str, int] | None = None
                  ) -> tuple[str, str | None] | None:
        self.state.restore()
        try:
            return eager_failure(self.model, inputs_at(self.example, self.dims, {**(others or {}), d.name: size}))
        finally:
            self.state.restore()

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
            raise self._limit(d, self._eager_low(d, new_lo), hi, "min", d.min, failure)
        self.ranges[d.name] = (new_lo, hi)
        if self.sizes[d.name] < new_lo:
            self.sizes[d.name] = next(iter(grid_sizes(d, new_lo)))
        self.notes.append(
            f"torch.export traces dim '{d.name}' only from {new_lo} (it assumes sizes inside the model are never 1); "
            f"the model runs at {d.min}, so the graph serves {d.min}..{d.max} and is verified at {d.min} and in between"
        )

    def _eager_low(self, d: DynamicDim, new_lo: int) -> int:
        """The smallest grid size from which the model runs eagerly, up to ``new_lo`` (bisected:
        the model fails at ``d.min``). torch's asserts may hold only from a larger size than the
        model needs (``h // 64`` in a reshape: asserted from 128, runs from 64), and a graph traced
        from the lower size is then verified there, so that is the range to ask for."""
        grid = [s for s in grid_sizes(d) if s <= new_lo]
        fails, runs = 0, len(grid) - 1  # grid[fails] fails, grid[runs] is assumed to run
        while runs - fails > 1:
            mid = (fails + runs) // 2
            if self._eager_at(d, grid[mid], {**self.sizes}) is None:
                runs = mid
            else:
                fails = mid
        return grid[runs] if grid else new_lo

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


def stepped_limit(model: "torch.nn.Module", example: tuple, dims: tuple[DynamicDim, ...]) -> ConfigError | None:
    """A dim declared without a step that the model itself runs at only every k-th size.

    fxtrt traces on the dim's grid (gcd of min, opt, max), so such a model captures, yet a claim
    of every size may not generalise: torch's solver meets ``x/32 == (x/16)//2`` (timm's DLA
    adds levels whose sizes agree at multiples of 32 only) and gives up. Where the model fails
    eagerly one past the example, that is its limit, not fxtrt's: a ConfigError with the step it
    runs at, as :func:`fxtrt.frontend.guards.check_hole_runs` gives for a fact torch assumed.
    """
    for d in dims:
        if d.is_batch or d.step or d.grid == 1:
            continue
        near = d.example + 1 if d.example + 1 <= d.max else d.example - 1
        failure = eager_failure(model, inputs_at(example, dims, {d.name: near}))
        found = step_on_grid(model, example, dims, {d.name: near}) if failure is not None else None
        if found is None:
            continue
        _, step, runs = found
        lo, hi = -(-d.min // step) * step, d.max // step * step
        opt = min(max(lo, d.opt // step * step), hi)
        return ConfigError(
            f"dynamic dim '{d.name}' is served only on multiples of {step}: the model runs at "
            f"{', '.join(map(str, runs))} and fails at {d.name}={near} ({failure[0]}), so no one graph holds "
            f"every size of {d.min}..{d.max}", source=failure[1],
            hint=f"declare the step: ({lo}, {opt}, {hi}, {step}) for '{d.name}'")
    return None


def confirmed_step(model: "torch.nn.Module", example: tuple, dims: tuple[DynamicDim, ...],
                   error: GeneralizationError) -> GeneralizationError | None:
    """The solver's step (:func:`fxtrt.frontend.program.step_hint`) checked on the model: the first
    relation torch gave up on may hold on multiples of 16 while the model itself runs only on
    multiples of 32 (timm's resnetaa34d fails eagerly at 80). Doubled until the model runs at
    each multiple in the range (the first five); None when the solver's step stands or none fits."""
    found = getattr(error, "solver_step", None)
    if found is None:
        return None
    d, step = found
    for s in (step * 2**k for k in range(8)):
        sizes = list(range(-(-d.min // s) * s, d.max + 1, s))[:5]
        if not sizes:
            return None
        if all(eager_failure(model, inputs_at(example, dims, {d.name: n})) is None for n in sizes):
            return None if s == step else GeneralizationError(error.message, source=error.source,
                                                              hint=step_hint(d, s))
    return None
