"""Inputs at other sizes, made from the user's example.

Tiling (then cropping) along a dynamic dim keeps every value one the model has already seen:
token ids stay valid ids, masks stay masks, lengths stay in range.
"""
from __future__ import annotations

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


def capture_sizes(dim: DynamicDim) -> tuple[int, int]:
    """Two sizes to trace a dim at.

    Never 0 or 1 (torch.export specialises those), and for the batch never the example's own
    size, so a value baked from the example cannot pass for a batch-independent constant.
    """
    avoid = {0, 1} | ({dim.example} if dim.is_batch else set())
    if not dim.is_batch and dim.example not in avoid:
        return dim.example, dim.example + 1
    picks = [s for s in range(2, 2 + 8) if s not in avoid][:2]
    return picks[0], picks[1]


def verification_sizes(dim: DynamicDim) -> list[int]:
    """min, opt, max and one odd size in between: the sizes an artifact is checked at."""
    sizes = {dim.min, dim.opt, dim.max}
    odd = next((s for s in range(dim.min + 1, dim.max) if s % 2 == 1 and s not in sizes), None)
    if odd is not None:
        sizes.add(odd)
    return sorted(sizes)
