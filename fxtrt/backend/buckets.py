"""A set of static-batch ONNX models served as one model of any batch size.

torchpipe serves ``model="b1.onnx&b4.onnx&b8.onnx"`` as one virtual model covering batch 1-8.
fxtrt does the same when the batch can't be dynamic (the graph's structure depends on it, e.g.
a Python loop over the samples) or when asked to with ``compile(..., buckets=(1, 4, 8, 16))``:
one static ONNX model per bucket size, and a server that runs any batch through them.

Serving a batch of ``n`` (:func:`split_batch`): greedily, a chunk of the largest bucket that is
<= the samples left; when fewer samples are left than the smallest bucket, one last chunk of the
smallest bucket, padded by repeating its last sample (so the padding holds values the model has
already seen: valid token ids, masks, lengths). Each chunk's outputs are sliced back to its real
samples and concatenated along the output's batch axis. Batches above the largest bucket are
served too, in chunks of the largest bucket. This is only correct for models whose samples
don't interact (no statistic over the batch); the verification at sizes between the buckets
(:func:`bucket_verification_sizes`) is what shows it.

Example::

    split_batch(13, (1, 4, 8, 16))   # [(8, 8), (4, 4), (1, 1)]: (samples, bucket) per chunk
    split_batch(3, (4, 8))           # [(3, 4)]: 3 samples padded to a batch of 4
    default_buckets(1, 8, 32)        # (1, 4, 8, 16, 32)
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from fxtrt.errors import ConfigError
from fxtrt.settings import DynamicDim

log = logging.getLogger(__name__)

ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
}


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


def split_batch(n: int, buckets: Sequence[int]) -> list[tuple[int, int]]:
    """(samples, bucket) per chunk for a batch of ``n``; ``bucket - samples`` rows are padding."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"a bucket set serves batches of 1 or more samples, got batch size {n!r}")
    chunks: list[tuple[int, int]] = []
    left = int(n)
    while left > 0:
        fits = [b for b in buckets if b <= left]
        if fits:
            b = max(fits)
            chunks.append((b, b))
            left -= b
        else:
            chunks.append((left, min(buckets)))
            left = 0
    return chunks


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


def as_array(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


class BucketServer:
    """Runs any batch size through a set of static-batch ONNX models with ONNX Runtime (CPU).

    ``batch_sites``: (input index, axis) of the batch in each batched input (inputs without one
    go to every chunk whole). ``output_axes``: per output, its batch axis or None.
    """

    def __init__(
        self,
        paths: Mapping[int, Path],
        batch_sites: Sequence[tuple[int, int]],
        output_axes: Sequence[int | None],
    ) -> None:
        if not paths:
            raise ConfigError("a bucket set needs at least one model")
        self.paths = {int(b): Path(p) for b, p in sorted(paths.items())}
        self.buckets = tuple(self.paths)
        self.batch_sites = tuple(batch_sites)
        self.output_axes = tuple(output_axes)
        self._sessions: dict[int, Any] = {}

    def session(self, bucket: int) -> Any:
        if bucket not in self._sessions:
            import onnxruntime as ort

            self._sessions[bucket] = ort.InferenceSession(str(self.paths[bucket]), providers=["CPUExecutionProvider"])
        return self._sessions[bucket]

    def batch_size(self, arrays: Sequence[np.ndarray]) -> int:
        sizes = {int(arrays[i].shape[axis]) for i, axis in self.batch_sites if arrays[i].ndim > axis}
        if len(sizes) != 1 or any(arrays[i].ndim <= axis for i, axis in self.batch_sites):
            where = ", ".join(f"input {i} dim {axis}: {tuple(arrays[i].shape)}" for i, axis in self.batch_sites)
            raise ConfigError(f"the inputs disagree on the batch size ({where})",
                              hint="every batched input must have the same size in its batch dim")
        return sizes.pop()

    def plan(self, n: int) -> list[tuple[int, int]]:
        return split_batch(n, self.buckets)

    def run(self, inputs: Sequence[Any]) -> tuple[np.ndarray, ...]:
        """Chunk, pad, run, slice back and concatenate."""
        arrays = [as_array(v) for v in inputs]
        n = self.batch_size(arrays)
        pieces: list[list[np.ndarray]] = []
        start = 0
        for take, bucket in self.plan(n):
            chunk = list(arrays)
            for i, axis in self.batch_sites:
                part = np.take(arrays[i], np.arange(start, start + take), axis=axis)
                if bucket > take:
                    last = np.take(part, [take - 1], axis=axis)
                    part = np.concatenate([part] + [last] * (bucket - take), axis=axis)
                chunk[i] = part
            outs = self._run_one(bucket, chunk)
            sliced = []
            for out, axis in zip(outs, self.output_axes):
                if axis is not None and bucket > take:
                    per = out.shape[axis] // bucket
                    out = np.take(out, np.arange(take * per), axis=axis)
                sliced.append(out)
            pieces.append(sliced)
            start += take
        if len(pieces) == 1:
            return tuple(pieces[0])
        return tuple(
            np.concatenate([p[k] for p in pieces], axis=axis) if axis is not None else pieces[0][k]
            for k, axis in enumerate(self.output_axes)
        )

    def _run_one(self, bucket: int, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        session = self.session(bucket)
        feeds = {}
        for meta, arr in zip(session.get_inputs(), arrays):
            feeds[meta.name] = np.ascontiguousarray(arr.astype(ORT_TYPES.get(meta.type, arr.dtype), copy=False))
        return session.run(None, feeds)

    def describe(self, n: int) -> str:
        """``8+4+1`` or ``3->4`` (3 samples padded to 4): how a batch of ``n`` is served."""
        return "+".join(f"{take}" if take == bucket else f"{take}->{bucket}" for take, bucket in self.plan(n))


class BucketRunner(BaseRunner):
    """A Polygraphy runner over :class:`BucketServer`, so ``Comparator`` drives the bucket set
    exactly as it drives ONNX Runtime and TensorRT: same feeds, same checks."""

    def __init__(
        self,
        server: BucketServer,
        input_names: Sequence[str],
        output_names: Sequence[str],
        meta: TensorMetadata,
        name: str = "buckets",
    ) -> None:
        super().__init__(name=name, prefix="bucket-runner")
        self.server = server
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self._meta = meta

    def activate_impl(self) -> None:
        pass

    def deactivate_impl(self) -> None:
        pass

    def get_input_metadata_impl(self) -> TensorMetadata:
        return self._meta

    def infer_impl(self, feed_dict):
        start = time.perf_counter()
        outs = self.server.run([feed_dict[n] for n in self.input_names])
        self.inference_time = time.perf_counter() - start
        return OrderedDict(zip(self.output_names, outs))
