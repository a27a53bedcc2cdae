"""The sizes fxtrt traces, checks and builds at, and the example resized to them.

Capture, verification, bucket sets and TensorRT plans all pick sizes from a dim's range; the
rules live here, below every layer that uses them, so none has to reach up or sideways for them.

Tiling (then cropping) along a dynamic dim keeps every value one the model has already seen:
token ids stay valid ids, masks stay masks, lengths stay in range. Along the batch, the copies
of a floating-point input are nudged apart (:func:`vary_copies`): identical samples would hide
every interaction between samples (a statistic over the batch, padding, chunking) from the
checks that run on these inputs.

Example::

    grid_sizes(DynamicDim("h", 32, 64, 128, ((0, 2),), 64))       # range(32, 129, 32)
    verification_points(settings.dims)                            # [{"batch": 1}, {"batch": 8}, ...]
    powers_of_two(1, 32, start=4)                                 # [4, 8, 16]
"""
from __future__ import annotations

import itertools
import math
from typing import Mapping, Sequence

import torch

from fxtrt.settings import BATCH_NAME, DynamicDim


def resize_dim(t: torch.Tensor, dim: int, size: int, vary: bool = False, noise: "Noise | None" = None
               ) -> torch.Tensor:
    """``t`` tiled or cropped along ``dim`` to ``size``; with ``vary``, tiled copies of a
    floating-point tensor are nudged apart (:func:`vary_copies`, drawing from ``noise``)."""
    have = t.shape[dim]
    if size == have:
        return t
    if size < have:
        return t.narrow(dim, 0, size).contiguous()
    reps = [1] * t.dim()
    reps[dim] = -(-size // have)
    tiled = t.repeat(*reps).narrow(dim, 0, size).contiguous()
    return vary_copies(tiled, dim, have, noise) if vary and t.is_floating_point() else tiled


class Noise:
    """The seed-0 float64 normal stream, drawn once at the longest length asked for; the noise of
    a shape is its first ``numel`` values. torch fills normals 16 at a time from one uniform
    stream, so that is what ``torch.randn(shape)`` gives whenever ``numel`` is a multiple of 16,
    in any order of requests; one verification then draws once (drawing float64 normals per size
    took 4 of yolov8n's 21 s of verification)."""

    def __init__(self) -> None:
        self._drawn = torch.empty(0, dtype=torch.float64)

    def take(self, shape: Sequence[int]) -> torch.Tensor:
        """Read-only view of the stream's first values, shaped ``shape``."""
        n = math.prod(shape)
        if n > self._drawn.numel():
            self._drawn = torch.randn(-(-n // 16) * 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        return self._drawn[:n].view(tuple(shape))


_STEP = 1 << 16  # elements per step of the nudging on dim 0: its float64 temporaries stay in cache


def vary_copies(tiled: torch.Tensor, dim: int, have: int, noise: Noise | None = None) -> torch.Tensor:
    """Everything past the first ``have`` entries along ``dim`` plus deterministic noise of 5% of
    the example's spread: close to values the model has seen, yet no two samples alike. The
    values are part of what verification decides on (an ill-conditioned model passes or fails
    by them, timm visformer_tiny among them), so they are the same whichever ``noise`` stream
    they come from, and however the sum is stepped: each element is
    ``float(noise * scale + x)`` computed in float64 (``tiled`` is a fresh tensor, written in place)."""
    spread = float(tiled.narrow(dim, 0, have).double().std()) if tiled.numel() > 1 else 0.0
    scale = 0.05 * (spread if spread > 0 and spread == spread else 1.0)
    drawn = (noise or Noise()).take(tiled.shape)
    if dim != 0 or not tiled.is_contiguous():
        out = drawn.mul(scale)
        out.narrow(dim, 0, have).zero_()
        return out.add_(tiled).to(tiled.dtype)
    # dim 0: the copies are one contiguous run; stepping through it keeps every temporary small
    # (whole-tensor float64 passes at batch 32 cost yolov8n ~1 s of fresh memory)
    flat, flat_noise = tiled.view(-1), drawn.reshape(-1)
    for start in range(have * (tiled.numel() // tiled.shape[0]), flat.numel(), _STEP):
        part = flat[start:start + _STEP]
        part.copy_(flat_noise[start:start + _STEP].mul(scale).add_(part))
    return tiled


def inputs_at(
    example: Sequence[torch.Tensor], dims: Sequence[DynamicDim], sizes: Mapping[str, int], noise: Noise | None = None
) -> tuple[torch.Tensor, ...]:
    """The example resized so that every dim in ``sizes`` has the given size (``noise``: a stream
    to draw the batch copies' noise from, shared by the calls of one verification)."""
    out = list(example)
    for d in dims:
        if d.name in sizes:
            for i, axis in d.sites:
                out[i] = resize_dim(out[i], axis, sizes[d.name], vary=d.is_batch, noise=noise)
    return tuple(out)


def grid_sizes(dim: DynamicDim, low: int = 0) -> range:
    """Every size of ``dim`` on its grid (multiples of ``dim.grid``) in [max(min, low), max]."""
    g = dim.grid
    first = max(dim.min, -(-low // g) * g)
    return range(first, dim.max + 1, g)


def symbolic_size(dim: DynamicDim) -> int | None:
    """The size the symbolic capture traces ``dim`` at: the example's own when it lies on the
    grid, else the smallest grid size; never 0 or 1, which torch.export specialises. None when
    the range holds no such size."""
    if dim.example >= 2 and dim.example in grid_sizes(dim):
        return dim.example
    return next(iter(grid_sizes(dim, 2)), None)


def diff_sizes(dim: DynamicDim) -> list[int]:
    """Up to three grid sizes to trace a dim the model bakes in at: two fit ``a*size + c``, the
    third checks the fit. Never 0 or 1, and for the batch never the example's own size, so a
    value baked from the example cannot pass for a batch-independent constant. Where the grid
    of a dim without a step holds fewer than three, the first sizes of the range (8..12 with
    opt 12: grid 4 has only 8 and 12, so 8, 9, 10)."""
    avoid = {dim.example} if dim.is_batch else set()
    sizes = [s for s in itertools.islice(grid_sizes(dim, 2), 0, 8) if s not in avoid][:3]
    if len(sizes) < 3 and dim.step is None:  # a grid of gcd(min, opt, max) too coarse; no step claims every size
        sizes = [s for s in range(max(dim.min, 2), dim.max + 1) if s not in avoid][:3]
    if len(sizes) < 3 and avoid:  # a narrow batch range: the example's own size rather than too few
        sizes = sorted(set(sizes) | {s for s in grid_sizes(dim, 2) if s in avoid})[:3]
    return sizes


def verification_sizes(dim: DynamicDim) -> list[int]:
    """min, opt, max and one size in between (an odd multiple of the grid where there is one):
    the sizes an artifact is checked at, all on the grid."""
    sizes = {dim.min, dim.opt, dim.max}
    between = [s for s in itertools.islice(grid_sizes(dim, dim.min + 1), 0, 64) if s < dim.max and s not in sizes]
    pick = next((s for s in between if (s // dim.grid) % 2 == 1), between[0] if between else None)
    if pick is not None:
        sizes.add(pick)
    return sorted(sizes)


def _unique(points: Sequence[dict[str, int]]) -> list[dict[str, int]]:
    unique: list[dict[str, int]] = []
    for p in points:
        if p not in unique:
            unique.append(p)
    return unique


def verification_points(dims: Sequence[DynamicDim], traced_low: Mapping[str, int] | None = None,
                        extra: Sequence[Mapping[str, int]] = ()) -> list[dict[str, int]]:
    """The first dim (the batch) at min/opt/odd/max with the others at opt; each other dim at
    min, one size in between and max (at the first dim's extremes), all on the dims' grids.

    ``traced_low``: where torch.export traced a dim only from above its min (its 0/1 rule), a
    size in that gap is checked too. ``extra``: more sizes (the others at opt), such as where a
    fact torch assumed fails.
    """
    if not dims:
        return [{}]
    opt = {d.name: d.opt for d in dims}
    first, rest = dims[0], dims[1:]
    points = [{**opt, first.name: s} for s in verification_sizes(first)]
    for d in rest:
        mid = [s for s in verification_sizes(d) if s not in (d.min, d.max, d.opt)]
        for s in sorted({d.min, d.max}):
            for f in sorted({first.min, first.max}):
                points.append({**opt, d.name: s, first.name: f})
        for s in mid:
            points.append({**opt, d.name: s, first.name: first.opt})
    for d in dims:
        low = (traced_low or {}).get(d.name, d.min)
        gap = [s for s in grid_sizes(d, d.min + 1) if s < low]
        if gap:
            points.append({**opt, d.name: gap[len(gap) // 2]})
    points += [{**opt, **p} for p in extra]
    return _unique(points)


def unproven_points(points: Sequence[Mapping[str, int]], dims: Sequence[DynamicDim], traced_low: Mapping[str, int],
                    extra: Sequence[Mapping[str, int]] = ()) -> list[dict[str, int]]:
    """The ``points`` at which a graph rests on verification rather than on torch.export's proof:
    a dim below where torch traced it from, or a size where a fact torch assumed fails (``extra``)."""
    opt = {d.name: d.opt for d in dims}
    lows = {d.name: traced_low.get(d.name, d.min) for d in dims}
    failing = [{**opt, **p} for p in extra]
    return [dict(p) for p in points
            if any(p.get(n, low) < low for n, low in lows.items()) or {**opt, **p} in failing]


def powers_of_two(lo: int, hi: int, start: int = 1) -> list[int]:
    """The powers of two from ``start`` up that lie strictly between ``lo`` and ``hi``: the sizes
    both bucket sets and split TensorRT engines add between a range's anchors, so that padding a
    request up to the next size wastes at most half the work."""
    out = []
    p = start
    while p < hi:
        if p > lo:
            out.append(p)
        p *= 2
    return out


def _between(a: int, b: int) -> int | None:
    """The odd size nearest the middle of (a, b), the larger one on a tie; None if there is none."""
    odd = [s for s in range(a + 1, b) if s % 2 == 1]
    if not odd:
        inner = list(range(a + 1, b))
        return inner[len(inner) // 2] if inner else None
    mid = (a + b) / 2
    return min(odd, key=lambda s: (abs(s - mid), -s))


def bucket_verification_sizes(buckets: Sequence[int]) -> list[int]:
    """Batch sizes a bucket set is checked at: every bucket, one size between each pair of
    neighbours (3, 7, 13 for (1, 4, 8, 16)), 1 when the smallest bucket is larger (padding),
    and the largest + 1 (chunking past the largest bucket)."""
    sizes = set(buckets)
    for a, b in zip(buckets, buckets[1:]):
        s = _between(a, b)
        if s is not None:
            sizes.add(s)
    sizes.add(1)
    sizes.add(buckets[-1] + 1)
    return sorted(sizes)


def bucket_points(batch_sizes: Sequence[int], others: Sequence[DynamicDim]) -> list[dict[str, int]]:
    """Verification points: each batch size with the other dims at opt, then the corners of the
    other dims' extremes at the smallest and largest batch size."""
    opt = {d.name: d.opt for d in others}
    points = [{BATCH_NAME: b, **opt} for b in batch_sizes]
    for d in others:
        for s in sorted({d.min, d.max}):
            for b in sorted({batch_sizes[0], batch_sizes[-1]}):
                points.append({BATCH_NAME: b, **opt, d.name: s})
    return _unique(points)
