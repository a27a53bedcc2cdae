"""Inputs at other sizes, made from the user's example.

Tiling (then cropping) along a dynamic dim keeps every value one the model has already seen:
token ids stay valid ids, masks stay masks, lengths stay in range.
"""
from __future__ import annotations

import itertools
from typing import Mapping, Sequence

import torch

from fxtrt.settings import DynamicDim


def resize_dim(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``t`` tiled or cropped along ``dim`` to ``size``."""
    have = t.shape[dim]
    if size == have:
        return t
    if size < have:
        return t.narrow(dim, 0, size).contiguous()
    reps = [1] * t.dim()
    reps[dim] = -(-size // have)
    return t.repeat(*reps).narrow(dim, 0, size).contiguous()


def inputs_at(
    example: Sequence[torch.Tensor], dims: Sequence[DynamicDim], sizes: Mapping[str, int]
) -> tuple[torch.Tensor, ...]:
    """The example resized so that every dim in ``sizes`` has the given size."""
    out = list(example)
    for d in dims:
        if d.name in sizes:
            for i, axis in d.sites:
                out[i] = resize_dim(out[i], axis, sizes[d.name])
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
    value baked from the example cannot pass for a batch-independent constant."""
    avoid = {dim.example} if dim.is_batch else set()
    return [s for s in itertools.islice(grid_sizes(dim, 2), 0, 8) if s not in avoid][:3]


def verification_sizes(dim: DynamicDim) -> list[int]:
    """min, opt, max and one size in between (an odd multiple of the grid where there is one):
    the sizes an artifact is checked at, all on the grid."""
    sizes = {dim.min, dim.opt, dim.max}
    between = [s for s in itertools.islice(grid_sizes(dim, dim.min + 1), 0, 64) if s < dim.max and s not in sizes]
    pick = next((s for s in between if (s // dim.grid) % 2 == 1), between[0] if between else None)
    if pick is not None:
        sizes.add(pick)
    return sorted(sizes)
