"""The engine plan: which TensorRT engines to build from which ONNX, for which shapes.

One dynamic dim gives one engine with one optimization profile. With more than one, TensorRT
optimises for the whole box of shapes and gets slower (the seed measured 9 ms with batch and
length both dynamic against 4.6 ms with batch fixed), so one dim stays dynamic (``keep_dynamic``,
the batch by default) and every other one is discretised: one engine per value, each with that
dim fixed. :func:`default_split_values` says which values. A bucket set gets one static engine
per static-batch model (:func:`plan_buckets`).

Example::

    plan = plan_engines(Path("out/model.onnx"),
                        [TensorSpec("x", ("batch", "T", 80), "float32")],
                        {"batch": (1, 8, 32), "T": (20, 1000, 2000)})
    [e.engine_name for e in plan.engines]   # ['model_T20.engine', 'model_T32.engine', ...]
"""
from __future__ import annotations

import itertools
import logging
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from fxtrt.backend.tensorrt.checks import check_against_onnx, check_ranges, check_specs, check_unique
from fxtrt.backend.tensorrt.specs import ENGINE_SUFFIX, EnginePlan, EngineSpec, InputProfile, TensorSpec
from fxtrt.errors import ConfigError
from fxtrt.settings import Settings
from fxtrt.sizes import powers_of_two

log = logging.getLogger(__name__)

# A power of two this close (relative) to min, opt or max adds nothing: 1024 next to opt=1000.
_NEAR_ANCHOR = 1 / 8


# --------------------------------------------------------------------------- planning


def default_split_values(lo: int, opt: int, hi: int) -> tuple[int, ...]:
    """Sizes to build engines for when a dim with range (lo, opt, hi) is discretised.

    Rule: ``lo``, ``opt`` and ``hi`` themselves, plus every power of two strictly between
    ``lo`` and ``hi`` that is not within 1/8 of one of those three (``1024`` adds nothing next
    to ``opt=1000``). So ``(20, 1000, 2000)`` gives ``(20, 32, 64, 128, 256, 512, 1000, 2000)``:
    at most ``log2(hi/lo) + 3`` engines, spaced so that padding a request up to the next size
    wastes at most half the work.
    """
    anchors = {lo, opt, hi}
    far = [p for p in powers_of_two(lo, hi) if all(abs(p - a) > _NEAR_ANCHOR * a for a in anchors)]
    return tuple(sorted(anchors | set(far)))


def _tag(dim: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "", dim) or "d"


def _describe(fixed: Sequence[tuple[str, int]], ranges: Sequence[tuple[str, tuple[int, int, int]]]) -> str:
    parts = [f"{d} {lo}..{hi} (opt {opt})" for d, (lo, opt, hi) in ranges]
    parts += [f"{d} = {v}" for d, v in fixed]
    return ", ".join(parts) if parts else "static shapes"


def _profiles(
    specs: Sequence[TensorSpec],
    fixed: Mapping[str, int],
    ranges: Mapping[str, tuple[int, int, int]],
) -> tuple[InputProfile, ...]:
    out = []
    for s in specs:
        lo = {**{d: r[0] for d, r in ranges.items()}, **fixed}
        opt = {**{d: r[1] for d, r in ranges.items()}, **fixed}
        hi = {**{d: r[2] for d, r in ranges.items()}, **fixed}
        out.append(InputProfile(s.name, s.resolve(lo), s.resolve(opt), s.resolve(hi), dynamic=bool(s.dynamic_dims)))
    return tuple(out)


def _dynamic_dims(specs: Sequence[TensorSpec]) -> list[str]:
    """Dynamic dim names in order of first appearance, so plans are deterministic."""
    dims: list[str] = []
    for s in specs:
        for d in s.dynamic_dims:
            if d not in dims:
                dims.append(d)
    return dims


def plan_engines(
    onnx_path: Path,
    inputs: Sequence[TensorSpec],
    ranges: Mapping[str, tuple[int, int, int]],
    *,
    keep_dynamic: str = Settings.keep_dynamic,
    split: Mapping[str, Sequence[int]] | None = None,
) -> EnginePlan:
    """Engines for one dynamic ONNX model.

    At most one dynamic dim: one engine whose profile spans every range. More than one: the
    dim ``keep_dynamic`` stays dynamic and each other dim is discretised into
    :func:`default_split_values` (or ``split[dim]``), one engine per combination, named like
    ``model_T1000.engine``. ``split`` may also name a dim to discretise when it is the only
    dynamic one (a dynamic ONNX built as fixed-size engines).
    """
    onnx_path = Path(onnx_path)
    check_specs(inputs)
    dims = _dynamic_dims(inputs)
    check_ranges(ranges, dims)
    check_against_onnx(onnx_path, inputs)
    split = dict(split or {})
    discrete = _discretised(dims, keep_dynamic, split)
    values = {d: _split_values(d, ranges[d], split.get(d)) for d in discrete}
    dynamic = [d for d in dims if d not in values]
    dyn_ranges = tuple((d, tuple(int(v) for v in ranges[d])) for d in dynamic)
    engines = [_split_engine(onnx_path, inputs, tuple(zip(discrete, (int(v) for v in combo))), dyn_ranges)
               for combo in itertools.product(*(values[d] for d in discrete))]
    check_unique(engines)
    plan = EnginePlan(
        kind="split" if discrete else "single",
        engines=tuple(engines),
        keep_dynamic=keep_dynamic if len(dims) > 1 else (dims[0] if dynamic else None),
        split=tuple((d, values[d]) for d in discrete),
    )
    log.info("planned %d TensorRT engine(s) for %s: %s", len(engines), onnx_path.name,
             "; ".join(e.description for e in engines))
    return plan


def _discretised(dims: Sequence[str], keep_dynamic: str, split: Mapping[str, Sequence[int]]) -> list[str]:
    """The dims that get one engine per value: every dim but ``keep_dynamic`` when there are
    several, else only the ones ``split`` names."""
    for d in split:
        if d not in dims:
            raise ConfigError(f"split names {d!r}, which is not a dynamic dim of the inputs (dynamic dims: {dims})")
    if len(dims) <= 1:
        return [d for d in dims if d in split]
    if keep_dynamic not in dims:
        raise ConfigError(
            f"keep_dynamic={keep_dynamic!r} is not a dynamic dim; the inputs have dynamic dims {dims}",
            hint=f"pass keep_dynamic= one of {dims}: the dim that varies most from call to call",
        )
    if keep_dynamic in split:
        raise ConfigError(f"dim {keep_dynamic!r} can't be both kept dynamic and split")
    return [d for d in dims if d != keep_dynamic]


def _split_values(d: str, rng: tuple[int, int, int], given: Sequence[int] | None) -> tuple[int, ...]:
    """The sizes dim ``d`` is built at: ``given`` (checked against its verified range) or the default."""
    lo, opt, hi = rng
    if given is None:
        return default_split_values(lo, opt, hi)
    vals = tuple(sorted({int(v) for v in given}))
    if not vals:
        raise ConfigError(f"split[{d!r}] is empty")
    bad = [v for v in vals if not lo <= v <= hi]
    if bad:
        raise ConfigError(
            f"split[{d!r}] has sizes {bad} outside the range {lo}..{hi} that is verified",
            hint=f"widen the range of {d!r} or drop those sizes",
        )
    return vals


def _split_engine(onnx_path: Path, inputs: Sequence[TensorSpec], fixed: tuple[tuple[str, int], ...],
                  dyn_ranges: tuple[tuple[str, tuple[int, ...]], ...]) -> EngineSpec:
    """The engine for one combination of the discretised dims' values."""
    name = onnx_path.stem + "".join(f"_{_tag(d)}{v}" for d, v in fixed) + ENGINE_SUFFIX
    return EngineSpec(
        onnx_path=onnx_path,
        engine_name=name,
        inputs=_profiles(inputs, dict(fixed), dict(dyn_ranges)),  # type: ignore[arg-type]
        fixed=fixed,
        ranges=dyn_ranges,  # type: ignore[arg-type]
        description=_describe(fixed, dyn_ranges),  # type: ignore[arg-type]
    )


def plan_buckets(
    onnx_paths_by_batch: Mapping[int, Path],
    inputs: Sequence[TensorSpec],
    ranges: Mapping[str, tuple[int, int, int]] | None = None,
    *,
    batch_dim: str = "batch",
) -> EnginePlan:
    """One engine per static-batch ONNX (the seed's "load batch 1, 4 and 8 as one dynamic model").

    ``inputs`` describe the model with ``batch_dim`` symbolic; each bucket substitutes its batch
    size. Any other dynamic dim keeps its range from ``ranges`` in every bucket's profile.
    Engines are named ``<onnx stem>_b<batch>.engine`` (the stem is used as is when it already
    ends in ``_b<batch>``).
    """
    if not onnx_paths_by_batch:
        raise ConfigError("plan_buckets needs at least one (batch size, ONNX path)")
    check_specs(inputs)
    if not any(batch_dim in s.dynamic_dims for s in inputs):
        raise ConfigError(f"no input has the dim {batch_dim!r}; inputs: {[s.to_dict() for s in inputs]}")
    ranges = dict(ranges or {})
    others = [d for d in _dynamic_dims(inputs) if d != batch_dim]
    check_ranges(ranges, others)
    dyn_ranges = tuple((d, tuple(int(v) for v in ranges[d])) for d in others)

    engines = []
    for b in sorted(onnx_paths_by_batch):
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
            raise ConfigError(f"bucket batch sizes must be ints >= 1, got {b!r}")
        path = Path(onnx_paths_by_batch[b])
        specs = [TensorSpec(s.name, tuple(int(b) if d == batch_dim else d for d in s.shape), s.dtype) for s in inputs]
        check_against_onnx(path, specs)
        stem = path.stem if path.stem.endswith(f"_b{b}") else f"{path.stem}_b{b}"
        fixed = ((batch_dim, int(b)),)
        engines.append(EngineSpec(
            onnx_path=path,
            engine_name=stem + ENGINE_SUFFIX,
            inputs=_profiles(specs, {}, dict(dyn_ranges)),
            fixed=fixed,
            ranges=dyn_ranges,  # type: ignore[arg-type]
            description=_describe(fixed, dyn_ranges),  # type: ignore[arg-type]
        ))
    check_unique(engines)
    return EnginePlan(
        kind="buckets",
        engines=tuple(engines),
        keep_dynamic=None,
        split=((batch_dim, tuple(int(b) for b in sorted(onnx_paths_by_batch))),),
    )
