"""A set of static-batch ONNX models served as one model of any batch size.

Serving a batch of ``n`` (:func:`split_batch`): greedily, a chunk of the largest bucket that is
<= the samples left; when fewer samples are left than the smallest bucket, one last chunk of the
smallest bucket, padded by repeating its last sample (so the padding holds values the model has
already seen: valid token ids, masks, lengths). Each chunk's outputs are sliced back to its real
samples and concatenated along the output's batch axis. Batches above the largest bucket are
served in chunks of the largest bucket; that is only correct for models whose samples don't
interact, and verification at the largest bucket + 1 shows whether they do. When only the
chunked sizes fail (an output that depends on a sample's position), the set is kept and serves
at most its largest bucket per call (:meth:`BucketSet.settle`): a larger batch is a
``ConfigError`` that says why.

Example::

    split_batch(13, (1, 4, 8, 16))   # [(13, 16)]: one call, 3 rows of padding
    split_batch(37, (1, 4, 8, 16))   # [(16, 16), (16, 16), (5, 8)]: chunks above the largest
    buckets = BucketSet.compiled({1: Path("model_b1.onnx"), 4: ...}, captured, settings)
    buckets.describe({"batch": 13})  # "served as 13->16"
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

from fxtrt.artifacts.claims import DimClaim
from fxtrt.artifacts.base import Artifact, in_ranges
from fxtrt.artifacts.onnx_model import OnnxModel, onnx_entries
from fxtrt.backend.buckets import BatchSizeRead, output_batch_axes, static_output_shapes
from fxtrt.backend.graph_inputs import input_metadata
from fxtrt.backend.onnxruntime import open_session, run_session
from fxtrt.backend.verify import VerifyRow, format_rows
from fxtrt.compare import Tolerance
from fxtrt.errors import ConfigError, VerificationError
from fxtrt.frontend.capture import CapturedGraph
from fxtrt.settings import BATCH_NAME, DynamicDim, Settings
from fxtrt.sizes import bucket_points, bucket_verification_sizes

log = logging.getLogger(__name__)

SERVING = ("one call, padded to the smallest bucket that holds the batch by repeating the last sample; "
           "above the largest bucket, chunks of it; outputs sliced back and concatenated")



def split_batch(n: int, buckets: Sequence[int]) -> list[tuple[int, int]]:
    """(samples, bucket) per call for a batch of ``n``; ``bucket - samples`` rows are padding.

    Up to the largest bucket a batch is one call, padded to the smallest bucket that holds it:
    every sample keeps its position, so a model whose output depends on it (a per-sample loop
    with ``enumerate``) is served as it runs eagerly. Only above the largest bucket is the batch
    served in chunks of that bucket, the rest again padded to the smallest bucket holding it.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"a bucket set serves batches of 1 or more samples, got batch size {n!r}")
    largest = max(buckets)
    chunks: list[tuple[int, int]] = []
    left = int(n)
    while left > largest:
        chunks.append((largest, largest))
        left -= largest
    chunks.append((left, min(b for b in buckets if b >= left)))
    return chunks



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
        no_chunks: str | None = None,
    ) -> None:
        if not paths:
            raise ConfigError("a bucket set needs at least one model")
        self.paths = {int(b): Path(p) for b, p in sorted(paths.items())}
        self.buckets = tuple(self.paths)
        self.batch_sites = tuple(batch_sites)
        self.output_axes = tuple(output_axes)
        self.no_chunks = no_chunks  # why batches above the largest bucket are not served, if they aren't
        self._sessions: dict[int, Any] = {}

    def session(self, bucket: int) -> Any:
        if bucket not in self._sessions:
            self._sessions[bucket] = open_session(self.paths[bucket])
        return self._sessions[bucket]

    def batch_size(self, arrays: Sequence[np.ndarray]) -> int:
        sizes = {int(arrays[i].shape[axis]) for i, axis in self.batch_sites if arrays[i].ndim > axis}
        if len(sizes) != 1 or any(arrays[i].ndim <= axis for i, axis in self.batch_sites):
            where = ", ".join(f"input {i} dim {axis}: {tuple(arrays[i].shape)}" for i, axis in self.batch_sites)
            raise ConfigError(f"the inputs disagree on the batch size ({where})",
                              hint="every batched input must have the same size in its batch dim")
        return sizes.pop()

    def plan(self, n: int) -> list[tuple[int, int]]:
        if self.no_chunks is not None and n > self.buckets[-1]:
            raise ConfigError(f"this bucket set serves at most {self.buckets[-1]} samples per call, got a batch of "
                              f"{n}: {self.no_chunks}", hint=f"split the batch into calls of at most {self.buckets[-1]}")
        return split_batch(n, self.buckets)

    def chunked(self, n: int) -> bool:
        """Whether a batch of ``n`` is served in more than one call."""
        return len(split_batch(n, self.buckets)) > 1

    def describe_plan(self, n: int) -> str:
        return "+".join(f"{take}" if take == bucket else f"{take}->{bucket}" for take, bucket in split_batch(n, self.buckets))

    def again(self, paths: Mapping[int, Path] | None = None, no_chunks: str | None = None) -> "BucketServer":
        """The same serving over other files (moved, fp16) or without chunks."""
        return BucketServer(paths if paths is not None else self.paths, self.batch_sites, self.output_axes,
                            no_chunks if no_chunks is not None else self.no_chunks)

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
        return list(run_session(self.session(bucket), arrays).values())

    def describe(self, n: int) -> str:
        """``13->16`` (13 samples padded to 16) or ``16+16+5->8`` past the largest bucket: how ``n`` is served."""
        self.plan(n)
        return self.describe_plan(n)


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


class BucketSet(Artifact):
    """One static-batch ONNX model per bucket, served as one model of any batch size.

    ``others`` are the dims besides the batch (still dynamic in every bucket model). Verified
    as served: at every bucket, the sizes between them, 1 and past the largest bucket.
    """

    def __init__(
        self,
        server: BucketServer,
        input_names: Sequence[str],
        output_names: Sequence[str],
        batch: DynamicDim,
        others: Sequence[DynamicDim],
        *,
        tolerance: Tolerance,
        name: str = "buckets",
        holes: Sequence[Any] = (),
    ) -> None:
        self.server = server
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        self.batch = batch
        self.others = tuple(others)
        self.tolerance = tolerance
        self.name = name
        self.chunk_rows: tuple[VerifyRow, ...] = ()  # the rows that showed chunking changes the outputs
        self.holes = tuple(holes)
        opt = {d.name: d.opt for d in self.others}
        at_holes = [{BATCH_NAME: server.buckets[-1], **opt, **p} for h in self.holes for p in h.points]
        points = bucket_points(bucket_verification_sizes(server.buckets), self.others)
        self.points = tuple(points + [p for p in at_holes if p not in points])

    @classmethod
    def compiled(cls, paths: Mapping[int, Path], captured: CapturedGraph, settings: Settings) -> "BucketSet":
        """The bucket models compile lowered; each output's batch axis read from their static shapes."""
        assert settings.batch is not None
        shapes = {b: static_output_shapes(onnx.load(str(p), load_external_data=False)) for b, p in paths.items()}
        server = BucketServer(paths, settings.batch.sites, output_batch_axes(shapes))
        return cls(server, captured.input_names, captured.output_names, settings.batch,
                   [d for d in settings.dims if not d.is_batch], tolerance=Tolerance(settings.atol, settings.rtol),
                   holes=captured.holes)

    @property
    def buckets(self) -> tuple[int, ...]:
        return self.server.buckets

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(self.server.paths.values())

    @property
    def primary(self) -> Path:
        """The largest bucket's model."""
        return self.server.paths[self.buckets[-1]]

    def runner(self) -> BaseRunner:
        meta = input_metadata(self.primary, self.batch.sites)
        return BucketRunner(self.server, self.input_names, self.output_names, meta, name=self.name)

    def serves(self, sizes: Mapping[str, int]) -> bool:
        n = sizes.get(BATCH_NAME, 1)
        within = self.server.no_chunks is None or n <= self.buckets[-1]
        return n >= 1 and within and in_ranges(sizes, self.others)

    def settle(self, rows: Sequence[VerifyRow]) -> tuple["BucketSet", list[VerifyRow]]:
        """When only the batches served in chunks fail (above the largest bucket, which is at least
        the batch range's max), the samples are not independent: an output that depends on a
        sample's position, say. Every batch compile claims is one padded call and passed, so
        the set stays, serving at most its largest bucket per call; the chunked rows leave the
        verification table for ``stages.buckets.chunking``, which records why."""
        bad = {r.sizes[BATCH_NAME] for r in rows if not r.passed}
        if not bad or not all(self.server.chunked(n) for n in bad) or self.server.no_chunks is not None:
            return self, list(rows)
        how = ", ".join(f"{n} as {self.server.describe_plan(n)}" for n in sorted(bad))
        why = (f"the model's samples are not independent, so a batch split into chunks ({how}) differs from "
               "the model (an output that depends on a sample's position in the batch, say)")
        restricted = BucketSet(self.server.again(no_chunks=why), self.input_names, self.output_names, self.batch,
                               self.others, tolerance=self.tolerance, name=self.name, holes=self.holes)
        restricted.notes = (f"batches above {self.buckets[-1]} are not served: {why}",)
        restricted.chunk_rows = tuple(r for r in rows if r.sizes[BATCH_NAME] in bad)
        log.warning("the bucket set serves at most %d samples per call: %s", self.buckets[-1], why)
        return restricted, [r for r in rows if r.sizes[BATCH_NAME] not in bad]

    def check(self, rows: Sequence[VerifyRow], divergence: Any = None) -> None:
        """A bucket set whose every exact-bucket batch passes fails because of how the other
        batches are served, padded or in chunks: the model's samples interact (a statistic over
        the batch sees the padding rows). Say that, not that a pass broke it."""
        bad = [r for r in rows if not r.passed]
        if not bad and not isinstance(divergence, BatchSizeRead):
            return
        exact = {r.sizes[BATCH_NAME] for r in rows if r.sizes[BATCH_NAME] in self.buckets}
        failed = sorted({r.sizes[BATCH_NAME] for r in bad})
        if not exact & set(failed) and isinstance(divergence, BatchSizeRead):
            a, b = divergence.sizes
            raise VerificationError(
                f"the model reads the batch size as a value (len(x), a condition on x.size(0)): one sample copied "
                f"to batch {a} and to batch {b} gives different outputs for it, so a batch padded to a bucket is not "
                f"what the model would see, and no bucket set serves it (|a-b| <= {self.tolerance.atol:g} + "
                f"{self.tolerance.rtol:g}*|ref|):\n{format_rows(rows)}",
                rows=list(rows), source=divergence.source,
                hint="compute without the batch size (it is the number of samples, not a value), or serve only "
                     "batches that are exactly a bucket (buckets=...)",
            )
        if exact and not exact & set(failed):
            how = ", ".join(f"{n} as {self.server.describe_plan(n)}" for n in failed)
            raise VerificationError(
                f"the bucket set matches the model at every batch that is exactly a bucket "
                f"({', '.join(map(str, sorted(exact)))}), but not where a batch is padded or split into chunks "
                f"({how}): this model's samples are not independent (a statistic over the batch sees the padding "
                f"rows), so no bucket set serves it (|a-b| <= {self.tolerance.atol:g} + "
                f"{self.tolerance.rtol:g}*|ref|):\n{format_rows(rows)}",
                rows=list(rows),
                hint="serve only batches that are exactly a bucket (buckets=...), or make the samples independent "
                     "(in eval mode, with no statistic over the batch) so the batch can be padded",
            )
        super().check(rows, divergence)

    def describe(self, sizes: Mapping[str, int]) -> str:
        return f"served as {self.server.describe(sizes[BATCH_NAME])}"

    def members(self) -> dict[int | None, Artifact]:
        """Each bucket's static model, checked at its own batch (with the other dims' corners)."""
        return {b: OnnxModel(p, self.input_names, self.output_names, dims=self.others, fixed={BATCH_NAME: b},
                             points=bucket_points([b], self.others), tolerance=self.tolerance)
                for b, p in self.server.paths.items()}

    def with_members(self, paths: Mapping[int | None, Path], *, name: str, tolerance: Tolerance) -> "BucketSet":
        """The same bucket set over other files with the same inputs and outputs (its fp16 twin)."""
        server = self.server.again({b: p for b, p in paths.items() if b is not None})
        twin = BucketSet(server, self.input_names, self.output_names, self.batch, self.others, tolerance=tolerance,
                         name=name, holes=self.holes)
        twin.chunk_rows = self.chunk_rows
        return twin

    def moved_to(self, directory: Path) -> "BucketSet":
        server = self.server.again({b: Path(directory) / p.name for b, p in self.server.paths.items()})
        moved = BucketSet(server, self.input_names, self.output_names, self.batch, self.others,
                          tolerance=self.tolerance, name=self.name, holes=self.holes)
        moved.notes, moved.chunk_rows = self.notes, self.chunk_rows
        return moved

    def index(self) -> dict[str, Path]:
        out = onnx_entries("onnx", self.primary)
        for b, p in self.server.paths.items():
            out.update(onnx_entries(f"onnx_b{b}", p))
        return out

    def claimed(self) -> tuple[DimClaim, ...]:
        """The batch from 1 (a call is padded to the smallest bucket that holds it) to the largest
        bucket, or without an upper end where verification showed chunks match the model."""
        largest = self.buckets[-1]
        chunked = self.server.no_chunks is None
        batch = DimClaim(BATCH_NAME, 1, None if chunked else largest, None, tuple(self.batch.sites), self.batch.opt,
                         f"padded to buckets {', '.join(map(str, self.buckets))}"
                         + (f"; above {largest} in chunks" if chunked else
                            f"; serves at most {largest} samples per call: {self.server.no_chunks}"))
        return (batch, *(DimClaim.of(d) for d in self.others))

    def record(self) -> dict[str, dict[str, Any]]:
        entry: dict[str, Any] = {"models": {str(b): p.name for b, p in self.server.paths.items()},
                                 "output_batch_axes": dict(zip(self.output_names, self.server.output_axes)),
                                 "serving": SERVING}
        if self.server.no_chunks is not None:
            entry["chunking"] = {"served": False, "max_batch": self.buckets[-1], "why": self.server.no_chunks,
                                 "rows": [r.to_dict() for r in self.chunk_rows]}
        return {"buckets": entry}

    stage_text = {"buckets": lambda name, stage: buckets_text(name, stage)}

    def __repr__(self) -> str:
        return f"BucketSet({list(self.buckets)}: {self.primary.parent})"


def buckets_text(name: str, stage: dict[str, Any]) -> list[str]:
    """The report's text for ``stages["buckets"]``: the buckets, why, where, the models, the serving."""
    how = "chosen automatically" if stage.get("automatic") else "as asked"
    out = [f"{name}: one static-batch model per batch size {stage.get('buckets')} ({how})"]
    out.append(f"  why: {stage.get('why')}")
    if stage.get("source"):
        out.append(f"  at: {stage['source']}")
    if stage.get("models"):
        out.append("  models: " + ", ".join(stage["models"].values()))
    if stage.get("serving"):
        out.append(f"  serving: {stage['serving']}")
    return out
