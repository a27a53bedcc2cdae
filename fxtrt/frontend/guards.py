"""Check the runtime assertions torch.export defers, at every size of the declared ranges.

Some facts a graph relies on cannot be proved symbolically: Segformer's reshapes need
``(H-1)//4 + 1`` to differ from its square, true for every H, but not something sympy can show.
torch.export can defer such facts to runtime asserts (``prefer_deferred_runtime_asserts_over_guards``)
instead of refusing the dim. ONNX has no asserts, so fxtrt evaluates each one at every size
the artifact claims (every integer of each declared range, every multiple of a dim's step) and
only then drops them. A fact that fails only at the low end of one dim's range (the 0/1 rule:
``(T-3)//2 != 0`` for a stride-2 conv) raises that dim's traced low, which capture treats as it
treats torch's own low-end refinements (eager check at the declared min, verification below the
traced low). A fact that fails anywhere else is often only torch being careful (a slice
``[:H]`` of a tensor ``2*ceil(H/2)`` long is assumed not to be a no-op, false for every even H,
yet the graph is right there too), so it is a :class:`Hole`: capture checks the model runs
eagerly at a sample of its failing sizes, and verification checks the artifact there as well.
Where the graph really is wrong at those sizes (the model takes another path), verification
fails and its error names the assumption and its line.
"""
from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import sympy
import torch

from fxtrt.errors import ConfigError
from fxtrt.frontend.export import eager_failure
from fxtrt.frontend.source import location_of_frames
from fxtrt.settings import DynamicDim
from fxtrt.sizes import inputs_at

log = logging.getLogger(__name__)

# More points than this per assert are sampled, not enumerated (and the note says so).
MAX_POINTS = 200_000


@dataclass(frozen=True)
class Hole:
    """A fact torch assumed that fails inside the declared ranges: the fact with the user's dim
    names, its line, and up to three sizes where it fails (first, middle, last)."""

    fact: str
    source: str | None
    points: tuple[dict[str, int], ...]
    beyond: tuple[str, int, int] | None = None  # (dim, its min, the max torch.export proves): sizes past the proof

    def limit(self, failing: Sequence[dict[str, int]]) -> ConfigError | None:
        """For sizes past torch.export's proof where the artifact differs: the limit, named by the
        first failing size."""
        if self.beyond is None:
            return None
        name, low, proven = self.beyond
        sizes = sorted(p[name] for p in failing if name in p and p[name] > proven)
        if not sizes:
            return None
        served = max([proven] + [p[name] for p in self.points if p[name] < sizes[0]])
        return ConfigError(
            f"dynamic dim '{name}' works only for {low}..{served} in this model: torch.export proves one graph "
            f"for {low}..{proven}, and past it the artifact differs from the model first at {name}={sizes[0]}",
            source=self.source, hint=f"ask for '{name}' within {low}..{served}")

    def covers(self, sizes: dict[str, int]) -> bool:
        """Whether ``sizes`` is one of the sampled points where the fact fails."""
        return any(all(sizes.get(k) == v for k, v in p.items()) for p in self.points)

    def describe(self) -> str:
        where = ", ".join(",".join(f"{k}={v}" for k, v in p.items()) for p in self.points)
        return f"torch traced the graph assuming {self.fact}, which fails at {where}" + \
            (f" (at {self.source})" if self.source else "")


@dataclass(frozen=True)
class AssertCheck:
    """What checking the deferred asserts found: how many, at how many points, exhaustively or not."""

    asserts: int
    points: int
    exhaustive: bool
    skipped: int  # asserts on tensor values (unbacked symbols), which no size can decide
    lows: dict[str, int] = field(default_factory=dict)  # dim -> the size from which every assert holds
    holes: tuple[Hole, ...] = ()  # facts that fail inside the ranges: verified there, not trusted

    def note(self) -> str | None:
        if not self.asserts and not self.skipped:
            return None
        how = "every size of the declared ranges" if self.exhaustive else "a sample of the declared ranges"
        text = (f"{self.asserts} runtime assert(s) torch.export could not prove symbolically were checked at {how} "
                f"({self.points} point(s)) and hold")
        if self.skipped:
            text += f"; {self.skipped} assert(s) on tensor values were left to verification"
        for hole in self.holes:
            text += f"; {hole.describe()}: the artifact is verified at those sizes too"
        return text


def _symbols(ep: torch.export.ExportedProgram, dims: Sequence[DynamicDim]
             ) -> tuple[dict[sympy.Symbol, tuple[DynamicDim, int]], dict[sympy.Symbol, sympy.Expr]]:
    """Each dim's symbol and the factor its input size is of it (``step`` for ``32*s6``), and the
    symbols of its other sites in terms of the first: the user declared them one size, and torch
    may keep them apart with an equality assert (an input pair concatenated, then chunked)."""
    user = set(ep.graph_signature.user_inputs)
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in user]
    out: dict[sympy.Symbol, tuple[DynamicDim, int]] = {}
    alias: dict[sympy.Symbol, sympy.Expr] = {}
    for d in dims:
        first: tuple[sympy.Symbol, int] | None = None
        for i, axis in d.sites:
            size = placeholders[i].meta["val"].shape[axis]
            if not isinstance(size, torch.SymInt):
                continue
            expr = size.node.expr
            coeff, rest = expr.as_coeff_Mul() if isinstance(expr, sympy.Mul) else (1, expr)
            if not isinstance(rest, sympy.Symbol):
                continue
            if first is None:
                first = (rest, int(coeff))
                out[rest] = (d, int(coeff))
            elif rest != first[0]:
                alias[rest] = first[0] * first[1] / int(coeff)
    return out, alias


def _values(d: DynamicDim, factor: int) -> range:
    return range(-(-d.min // factor), d.max // factor + 1)


def check_deferred_asserts(ep: torch.export.ExportedProgram, dims: Sequence[DynamicDim]) -> AssertCheck:
    """Evaluate every deferred runtime assert of ``ep`` over the declared ranges of ``dims``."""
    from torch.utils._sympy.printers import PythonPrinter

    vals = [n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder"]
    fake = next((v for v in vals if isinstance(v, torch.Tensor) and hasattr(v, "fake_mode")), None)
    if fake is None or fake.fake_mode.shape_env is None:
        return AssertCheck(0, 0, True, 0)
    shape_env = fake.fake_mode.shape_env
    symbols, alias = _symbols(ep, dims)
    asserts = [ra for ras in shape_env.deferred_runtime_asserts.values() for ra in ras]
    checked = skipped = points = 0
    exhaustive = True
    lows: dict[str, int] = {}
    holes: list[Hole] = []
    seen: set[str] = set()
    for ra in asserts:
        expr = shape_env.simplify(ra.expr.xreplace(alias))
        if expr in (sympy.true, True) or str(expr) in seen:
            continue
        seen.add(str(expr))
        free = sorted(expr.free_symbols, key=str)
        if any(s not in symbols for s in free):
            skipped += 1
            continue
        ranges = [_values(*symbols[s]) for s in free]
        if math.prod(len(r) for r in ranges) > MAX_POINTS:
            exhaustive = False
            per = max(2, int(MAX_POINTS ** (1 / len(ranges))))
            ranges = [r if len(r) <= per else [r[k * (len(r) - 1) // (per - 1)] for k in range(per)] for r in ranges]
        fn = eval(f"lambda {', '.join(str(s) for s in free)}: {PythonPrinter().doprint(expr)}")  # noqa: S307
        failed = []
        for combo in itertools.product(*ranges):
            points += 1
            try:
                holds = fn(*combo)
            except ZeroDivisionError:  # a Mod or // by a size that is 0 there: the fact is not shown to hold
                holds = False
            if not holds:
                failed.append(combo)
        if failed:
            low = _low_end(failed, ranges)
            if low is None:
                holes.append(_hole(ra, expr, free, failed, symbols))
            else:
                d, factor = symbols[free[low[0]]]
                lows[d.name] = max(lows.get(d.name, d.min), low[1] * factor)
        checked += 1
    check = AssertCheck(checked, points, exhaustive, skipped, lows, tuple(holes))
    if checked:
        log.info("%s", check.note())
    return check


def _low_end(failed: list[tuple[int, ...]], ranges: list[Any]) -> tuple[int, int] | None:
    """(axis, value) if the assert fails exactly where one symbol is below ``value`` (at every
    value of the others) and holds everywhere else: a low end, not a hole in the range."""
    for axis, values in enumerate(ranges):
        worst = max(c[axis] for c in failed)
        above = [v for v in values if v > worst]
        if not above:
            continue
        below = sum(1 for v in values if v < above[0])
        others = math.prod(len(r) for j, r in enumerate(ranges) if j != axis)
        if below * others == len(failed):
            return axis, above[0]
    return None


def _hole(ra: Any, expr: sympy.Expr, free: list, failed: list[tuple[int, ...]], symbols) -> Hole:
    names = {s: sympy.Symbol(symbols[s][0].name if symbols[s][1] == 1 else f"({symbols[s][0].name}/{symbols[s][1]})")
             for s in free}
    sample = sorted({0, len(failed) // 2, len(failed) - 1})
    points = tuple({symbols[s][0].name: v * symbols[s][1] for s, v in zip(free, failed[k])} for k in sample)
    loc = None
    stack = getattr(ra, "stack", None)
    if stack is not None:
        try:
            loc = location_of_frames([(f.filename, f.lineno or 0) for f in stack.summary()])
        except Exception:  # a traceback torch could not render: no line, the fact still stands
            loc = None
    return Hole(str(expr.xreplace(names)), str(loc) if loc else None, points)


def check_hole_runs(model: torch.nn.Module, example: tuple[torch.Tensor, ...], dims: Sequence[DynamicDim],
                    hole: Hole) -> None:
    """The model must run eagerly where a fact torch assumed fails; verification checks the rest."""
    for point in hole.points:
        failure = eager_failure(model, inputs_at(example, dims, point))
        if failure is not None:
            sizes = ", ".join(f"{k}={v}" for k, v in point.items())
            found = step_on_grid(model, example, dims, point) if len(point) == 1 else _step_alone(model, example, dims, point)
            if found is not None:
                d, step, runs = found
                lo, hi = -(-d.min // step) * step, d.max // step * step
                opt = min(max(lo, d.opt // step * step), hi)
                raise ConfigError(
                    f"dynamic dim '{d.name}' is served only on multiples of {step}: the model runs at "
                    f"{', '.join(map(str, runs))} and fails at {sizes} ({failure[0]}); {hole.describe()}",
                    source=failure[1] or hole.source,
                    hint=f"declare the step: ({lo}, {opt}, {hi}, {step}) for '{d.name}'")
            raise ConfigError(f"{hole.describe()}, and at {sizes} the model fails: {failure[0]}",
                              source=failure[1] or hole.source,
                              hint="give the dim a step, (min, opt, max, step), so that only sizes the model serves "
                                   "are claimed, or narrow the range")


def _step_alone(model: torch.nn.Module, example: tuple[torch.Tensor, ...], dims: Sequence[DynamicDim],
                point: dict[str, int]) -> tuple[DynamicDim, int, list[int]] | None:
    """:func:`step_on_grid` for the one dim besides the batch at a failing ``point`` (timm's
    tresnet: ``size=161, batch=1``), when the model fails at that size with the batch as given."""
    batch = {d.name for d in dims if d.is_batch}
    alone = {k: v for k, v in point.items() if k not in batch}
    if len(alone) != 1 or len(alone) == len(point) or eager_failure(model, inputs_at(example, dims, alone)) is None:
        return None
    return step_on_grid(model, example, dims, alone)


STEPS = (2, 4, 8, 16, 32, 64, 128)


def step_on_grid(model: torch.nn.Module, example: tuple[torch.Tensor, ...], dims: Sequence[DynamicDim],
                 point: dict[str, int]) -> tuple[DynamicDim, int, list[int]] | None:
    """The smallest step (2, 4, ..., 128) whose first three multiples in the dim's range the model
    runs at, for a dim where it fails at ``point``: YOLO's stride of 32, found on the grid rather
    than guessed. None when no such step fits in the range."""
    ((name, failing),) = point.items()
    d = next((d for d in dims if d.name == name), None)
    if d is None:
        return None
    for step in STEPS:
        if failing % step == 0:
            continue
        runs = list(range(-(-d.min // step) * step, d.max + 1, step))[:3]
        if len(runs) < 2:
            return None
        if all(eager_failure(model, inputs_at(example, dims, {name: n})) is None for n in runs):
            return d, step, runs
    return None
