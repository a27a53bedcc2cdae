"""The rules of a bucket set: which buckets, which sizes it is checked at, and which output
axis carries the batch.

torchpipe serves ``model="b1.onnx&b4.onnx&b8.onnx"`` as one virtual model covering batch 1-8.
fxtrt does the same when the batch can't be dynamic (the graph's structure depends on it, e.g.
a Python loop over the samples) or when asked to with ``compile(..., buckets=(1, 4, 8, 16))``:
one static ONNX model per bucket size. How a batch is served through them is
:class:`fxtrt.artifacts.bucket_set.BucketSet`; this module holds the rules it and compile() share.

Example::

    default_buckets(1, 8, 32)                     # (1, 4, 8, 16, 32)
    bucket_verification_sizes((1, 4, 8, 16))      # [1, 3, 4, 7, 8, 13, 16, 17]
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import onnx
import torch
import torch.utils._pytree as pytree
from polygraphy.common import TensorMetadata

from fxtrt.errors import StructureError
from fxtrt.frontend.inputs import resize_dim
from fxtrt.settings import DynamicDim


def default_buckets(lo: int, opt: int, hi: int) -> tuple[int, ...]:
    """Bucket sizes for a batch range (min, opt, max) when fxtrt picks them itself.

    Rule: ``min``, ``opt`` and ``max``, plus every power of two from 4 up strictly between
    ``min`` and ``max``. So (1, 8, 32) gives (1, 4, 8, 16, 32) and (2, 6, 20) gives
    (2, 4, 6, 8, 16, 20): a request pads at most to the next bucket, and there are about
    ``log2(max)`` models to build.
    """
    sizes = {lo, opt, hi}
    p = 4
    while p < hi:
        if p > lo:
            sizes.add(p)
        p *= 2
    return tuple(sorted(sizes))


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
    points = [{"batch": b, **opt} for b in batch_sizes]
    for d in others:
        for s in sorted({d.min, d.max}):
            for b in sorted({batch_sizes[0], batch_sizes[-1]}):
                points.append({"batch": b, **opt, d.name: s})
    unique: list[dict[str, int]] = []
    for p in points:
        if p not in unique:
            unique.append(p)
    return unique


def output_batch_axes(shapes: Mapping[int, Sequence[Sequence[int | str]]]) -> tuple[int | None, ...]:
    """Per output, the axis that carries the batch, from its static shape in every bucket model.

    An axis carries the batch when its size is ``c * bucket`` for one integer ``c`` in every
    bucket (``c > 1`` for a batch-major flatten such as ``B*T``). With one bucket the first axis
    whose size equals it is taken. None: the output has no batch axis (it is taken from the first
    chunk; verification shows whether that is right).
    """
    buckets = sorted(shapes)
    n_out = len(shapes[buckets[0]])
    axes: list[int | None] = []
    for k in range(n_out):
        found = None
        rank = len(shapes[buckets[0]][k])
        for a in range(rank):
            sizes = [shapes[b][k][a] if a < len(shapes[b][k]) else None for b in buckets]
            if not all(isinstance(s, int) and s > 0 for s in sizes):
                continue
            if len(buckets) == 1:
                if sizes[0] == buckets[0]:
                    found = a
                    break
                continue
            ratios = {s / b for s, b in zip(sizes, buckets)}
            if len(ratios) == 1 and float(next(iter(ratios))).is_integer():
                found = a
                break
        axes.append(found)
    return tuple(axes)


def static_output_shapes(model: onnx.ModelProto) -> list[list[int | str]]:
    out = []
    for vi in model.graph.output:
        out.append([d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                    for d in vi.type.tensor_type.shape.dim])
    return out


def input_metadata(onnx_path: Path, dynamic_sites: Sequence[tuple[int, int]] = ()) -> TensorMetadata:
    """Polygraphy input metadata for ``onnx_path``, with the (input, axis) sites in
    ``dynamic_sites`` (a static model's batch axes) marked dynamic."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    meta = TensorMetadata()
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    for i, vi in enumerate(inputs):
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        shape: list[Any] = [d.dim_param or d.dim_value or None for d in vi.type.tensor_type.shape.dim]
        for j, axis in dynamic_sites:
            if j == i:
                shape[axis] = None
        meta.add(vi.name, dtype=dtype, shape=shape)
    return meta


@dataclass(frozen=True)
class BatchSizeRead:
    """Diagnosis for a bucket set that fails only where a batch is padded: the model reads the
    batch size itself as a value (``len(x)``, ``x.shape[0]`` in arithmetic), seen with identical
    samples, so no statistic over the batch can explain it. ``source``: where the graph's
    structure follows the batch, as capture found it."""

    sizes: tuple[int, int]
    source: str | None = None


def batch_size_read(model: torch.nn.Module, example: Sequence[torch.Tensor], batch: DynamicDim,
                    atol: float, rtol: float) -> BatchSizeRead | None:
    """Run the model on the example's first sample copied to two batch sizes (copies exactly
    alike): if that sample's outputs differ, the model reads the batch size as a value."""
    sizes = tuple(n for n in (batch.min, batch.min + 1, 2, 3) if n >= batch.min and n <= batch.max)
    pair = tuple(sorted(set(sizes)))[:2]
    if len(pair) < 2:
        return None
    outs = []
    for n in pair:
        inputs = list(example)
        for i, axis in batch.sites:
            inputs[i] = resize_dim(inputs[i].narrow(axis, 0, 1), axis, n)
        try:
            with torch.no_grad():
                leaves = pytree.tree_leaves(model(*inputs))
        except Exception:  # a model that cannot run at those sizes: no diagnosis
            return None
        outs.append([(t, axis) for t, axis in zip(leaves, _batch_axes(leaves, n))])
    for (a, axis_a), (b, axis_b) in zip(*outs):
        if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
            continue
        a0 = a.narrow(axis_a, 0, 1) if axis_a is not None else a
        b0 = b.narrow(axis_b, 0, 1) if axis_b is not None else b
        if a0.shape != b0.shape or not torch.allclose(a0.double(), b0.double(), atol=atol, rtol=rtol):
            return BatchSizeRead(pair)  # type: ignore[arg-type]
    return None


def _batch_axes(leaves: Sequence[object], n: int) -> list[int | None]:
    return [next((i for i, s in enumerate(t.shape) if s == n), None) if isinstance(t, torch.Tensor) else None
            for t in leaves]

