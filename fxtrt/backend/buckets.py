"""The rules of a bucket set: which buckets, which sizes it is checked at, and which output
axis carries the batch.

torchpipe serves ``model="b1.onnx&b4.onnx&b8.onnx"`` as one virtual model covering batch 1-8.
fxtrt does the same when the batch can't be dynamic (the graph's structure depends on it, e.g.
a Python loop over the samples) or when asked to with ``compile(..., buckets=(1, 4, 8, 16))``:
one static ONNX model per bucket size. How a batch is served through them is
:class:`fxtrt.artifacts.bucket_set.BucketSet`; this module holds the rules it and compile() share.

Example::

    default_buckets(1, 8, 32)                     # (1, 4, 8, 16, 32)

The sizes a bucket set is checked at (``bucket_verification_sizes``, ``bucket_points``) are in
:mod:`fxtrt.sizes` with the other verification points.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import onnx
import torch
import torch.utils._pytree as pytree

from fxtrt.errors import StructureError
from fxtrt.compare import compare_tensors
from fxtrt.settings import DynamicDim
from fxtrt.sizes import powers_of_two, resize_dim


def default_buckets(lo: int, opt: int, hi: int) -> tuple[int, ...]:
    """Bucket sizes for a batch range (min, opt, max) when fxtrt picks them itself.

    Rule: ``min``, ``opt`` and ``max``, plus every power of two from 4 up strictly between
    ``min`` and ``max``. So (1, 8, 32) gives (1, 4, 8, 16, 32) and (2, 6, 20) gives
    (2, 4, 6, 8, 16, 20): a request pads at most to the next bucket, and there are about
    ``log2(max)`` models to build.
    """
    return tuple(sorted({lo, opt, hi, *powers_of_two(lo, hi, start=4)}))


def fallback(batch: DynamicDim, exc: StructureError) -> tuple[tuple[int, ...], dict[str, Any], str]:
    """The batch can't be dynamic because the graph's structure follows it: the
    :func:`default_buckets` of its range, the ``report.stages["buckets"]`` record that says why,
    and the report's note."""
    buckets = default_buckets(batch.min, batch.opt, batch.max)
    stage = {
        "buckets": list(buckets), "automatic": True,
        "why": f"the batch can't be dynamic: {exc.message}", "node": exc.node, "source": exc.source,
        "rule": "min, opt and max of batch, plus the powers of two from 4 up between them",
    }
    note = (f"the graph's structure depends on the batch size, so fxtrt compiled a static-batch model per "
            f"bucket {list(buckets)} instead of one dynamic model (see stages.buckets)")
    return buckets, stage, note


def output_batch_axes(shapes: Mapping[int, Sequence[Sequence[int | str]]]) -> tuple[int | None, ...]:
    """Per output, the axis that carries the batch, from its shape in every bucket model.

    An axis carries the batch when its size is ``c * bucket`` for one ``c`` in every bucket
    (``c > 1`` for a batch-major flatten such as ``B*T``). ``c`` may be a size expression of the
    other dynamic dims, as the file names it (hf pixtral's patches of every image in one sequence:
    ``4*((size//16))**2`` at bucket 4). With one bucket the first axis whose size equals it is
    taken. None: the output has no batch axis (it is taken from the first chunk; verification
    shows whether that is right).
    """
    buckets = sorted(shapes)
    n_out = len(shapes[buckets[0]])
    axes: list[int | None] = []
    for k in range(n_out):
        found = None
        rank = len(shapes[buckets[0]][k])
        for a in range(rank):
            sizes = [shapes[b][k][a] if a < len(shapes[b][k]) else None for b in buckets]
            if len(buckets) == 1:
                if sizes[0] == buckets[0]:
                    found = a
                    break
                continue
            if _per_sample(sizes, buckets):
                found = a
                break
        axes.append(found)
    return tuple(axes)


def _per_sample(sizes: Sequence[int | str | None], buckets: Sequence[int]) -> bool:
    """Whether ``sizes[i] / buckets[i]`` is one and the same integer or size expression."""
    if all(isinstance(s, int) and s > 0 for s in sizes):
        ratios = {s / b for s, b in zip(sizes, buckets)}
        return len(ratios) == 1 and float(next(iter(ratios))).is_integer()
    if not all(isinstance(s, (int, str)) and s for s in sizes):
        return False
    import sympy

    try:
        ratios = {sympy.simplify(sympy.sympify(s) / b) for s, b in zip(sizes, buckets)}
    except (sympy.SympifyError, TypeError, ValueError, SyntaxError):  # a dim name sympy cannot read
        return False
    ratio = next(iter(ratios))
    return len(ratios) == 1 and (not ratio.is_number or bool(ratio.is_integer and ratio > 0))


def static_output_shapes(model: onnx.ModelProto) -> list[list[int | str]]:
    out = []
    for vi in model.graph.output:
        out.append([d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                    for d in vi.type.tensor_type.shape.dim])
    return out


@dataclass(frozen=True)
class BatchSizeRead:
    """Diagnosis for a bucket set that fails only where a batch is padded: the model reads the
    batch size itself as a value (``len(x)``, ``x.shape[0]`` in arithmetic), seen with identical
    samples, so no statistic over the batch can explain it. ``source``: where the graph's
    structure follows the batch, as capture found it."""

    sizes: tuple[int, int]
    source: str | None = None


def padding_probe_sizes(buckets: Sequence[int], limit: int = 16) -> list[int]:
    """The batch sizes :func:`batch_size_read` runs: every size up to ``limit`` and up to the
    largest bucket, and each bucket with its neighbours above that (where a condition on the batch
    size would flip between a batch and the bucket it is padded to)."""
    largest = max(buckets)
    sizes = set(range(1, min(largest, limit) + 1))
    sizes |= {n for b in buckets for n in (b - 1, b, b + 1) if 1 <= n <= largest}
    return sorted(sizes)


def batch_size_read(model: torch.nn.Module, example: Sequence[torch.Tensor], batch: DynamicDim,
                    atol: float, rtol: float, sizes: Sequence[int] | None = None) -> BatchSizeRead | None:
    """Run the model on the example's first sample copied to each batch size in ``sizes`` (copies
    exactly alike): if that sample's outputs differ between two of them, the model reads the batch
    size as a value (``len(x)``, ``torch.cond(x.size(0) > 2, ...)``), and a batch padded to a
    bucket is not the batch the model would see."""
    sizes = sorted(set(sizes if sizes is not None else (batch.min, batch.min + 1)))
    if len(sizes) < 2:
        return None
    first: tuple[int, list[torch.Tensor]] | None = None
    for n in sizes:
        inputs = list(example)
        for i, axis in batch.sites:
            inputs[i] = resize_dim(inputs[i].narrow(axis, 0, 1), axis, n)
        try:
            with torch.no_grad():
                leaves = [t for t in pytree.tree_leaves(model(*inputs)) if isinstance(t, torch.Tensor)]
        except Exception:  # a model that cannot run at that size: no diagnosis
            return None
        if first is None:
            first = (n, leaves)
            continue
        n0, base = first
        for a, b in zip(base, leaves):
            if a.dim() != b.dim():
                return BatchSizeRead((n0, n))
            # the batch axis: where the sizes are the two batch sizes (none: an output without one)
            axis = next((k for k, (x, y) in enumerate(zip(a.shape, b.shape)) if (x, y) == (n0, n)), None)
            if any(x != y for k, (x, y) in enumerate(zip(a.shape, b.shape)) if k != axis):
                return BatchSizeRead((n0, n))
            a0, b0 = (a, b) if axis is None else (a.narrow(axis, 0, 1), b.narrow(axis, 0, 1))
            if not compare_tensors(b0, a0, atol, rtol).passed:
                return BatchSizeRead((n0, n))
    return None
