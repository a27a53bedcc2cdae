"""The one reference of a compile: the original model, run once per feed.

:class:`ReferenceRunner` makes the feeds at any sizes and keeps each output by the feed's point,
so the fp32 verification, the fp16 repair and verification and the engine verification share
one eager run per size; it also gives the float64 and other-thread-count runs that
:func:`fxtrt.backend.verify.second_opinion` judges round-off by.

Example::

    reference = ReferenceRunner(model, example, settings.dims, input_names, output_names)
    feeds = reference.feeds([{"batch": 1}, {"batch": 8}])
    reference.outputs(feeds)
"""
from __future__ import annotations

import copy
import hashlib
import logging
import weakref
from collections import OrderedDict
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.utils._pytree as pytree
from polygraphy.common import TensorMetadata

from fxtrt.backend.torch.runner import TorchRunner
from fxtrt.compare import Feeds, feed_dtype, feeds_at, other_thread_count
from fxtrt.settings import DynamicDim

log = logging.getLogger(__name__)


class ReferenceRunner(TorchRunner):
    """The original model as the one reference of a compile.

    It makes the feeds at any sizes (:meth:`feeds`: the example tiled to them) and runs the
    model once per feed: outputs are kept by the feed's bytes, so the fp32 verification, the fp16
    repair and verification and the engine verification all reuse them. Its input metadata is
    the feeds' own types with every dim dynamic, so ``Comparator`` hands it every feed unchanged.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        example: Sequence[torch.Tensor],
        dims: Sequence[DynamicDim],
        input_names: Sequence[str],
        output_names: Sequence[str],
        name: str = "torch",
    ) -> None:
        meta = TensorMetadata()
        for n, t in zip(input_names, example):
            meta.add(n, dtype=feed_dtype(t.dtype), shape=[None] * t.dim())
        super().__init__(model, input_names, [t.dtype for t in example], output_names, meta, name=name)
        self.example = tuple(example)
        self.dims = tuple(dims)
        self.runs = 0  # eager forward passes actually made
        self._outputs: dict[bytes, OrderedDict] = {}
        self._outputs64: dict[bytes, dict[str, np.ndarray] | None] = {}
        self._model64: torch.nn.Module | None = None
        self._made: dict[tuple[int, ...], tuple[list[weakref.ref], bytes]] = {}

    def feeds(self, points: Sequence[Mapping[str, int]]) -> Feeds:
        """The example resized to each point, as ONNX feeds. Each is known by its point from
        then on (:meth:`_key`): the same point gives the same values, so no bytes are hashed."""
        feeds = feeds_at(self.example, self.dims, self.input_names, [dict(p) for p in points])
        for sizes, feed in feeds:
            arrays = [feed[n] for n in self.input_names]
            self._made[tuple(map(id, arrays))] = ([weakref.ref(a) for a in arrays],
                                                  b"point|" + repr(sorted(sizes.items())).encode())
        return feeds

    def _key(self, feed: Mapping[str, Any]) -> bytes:
        """What a feed's outputs are kept under: its point, for a feed :meth:`feeds` made and
        still alive (checked by identity), else a digest of its bytes."""
        arrays = [feed[n] for n in self.input_names]
        made = self._made.get(tuple(map(id, arrays)))
        if made is not None and all(ref() is a for ref, a in zip(made[0], arrays)):
            return made[1]
        return _digest(feed, self.input_names)

    def outputs(self, feeds: Feeds) -> list[dict[str, np.ndarray]]:
        """The model's outputs at ``feeds`` (the reference the fp16 repair works towards)."""
        with self:
            return [dict(self.infer(feed)) for _, feed in feeds]

    def float64_outputs(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The model's outputs at ``feed`` computed in float64 (a float64 copy of the model, made
        on first use), or None where the model does not run in float64."""
        key = self._key(feed)
        if key not in self._outputs64:
            self._outputs64[key] = None
            try:
                if self._model64 is None:
                    self._model64 = copy.deepcopy(self.model).double().eval()
                args = [a.double() if a.is_floating_point() else a for a in self.arguments(feed)]
                with torch.no_grad():
                    leaves = pytree.tree_leaves(self._model64(*args))
                self._outputs64[key] = self._named(leaves)
            except Exception as exc:  # a model that builds float32 tensors itself, say: no second opinion
                log.debug("the model does not run in float64: %s", exc)
        return self._outputs64[key]

    def float32_other_order(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The model's float32 outputs at ``feed`` on another thread count
        (:func:`fxtrt.compare.other_thread_count`): another accumulation order, not kept."""
        try:
            with torch.no_grad(), other_thread_count():
                leaves = pytree.tree_leaves(self.model(*self.arguments(feed)))
        except Exception as exc:  # noqa: BLE001 - it ran a moment ago; without it, the one order decides
            log.debug("the model did not run again: %s", exc)
            return None
        return self._named(leaves)

    def _named(self, leaves: Sequence[Any]) -> dict[str, np.ndarray] | None:
        """A second run's tensors by output name; None when it gave another number of outputs."""
        if len(leaves) != len(self.output_names):
            return None
        return {n: t.detach().numpy() for n, t in zip(self.output_names, leaves) if isinstance(t, torch.Tensor)}

    def infer_impl(self, feed_dict):
        key = self._key(feed_dict)
        if key not in self._outputs:
            self._outputs[key] = super().infer_impl(feed_dict)
            self.runs += 1
        else:
            self.inference_time = 0.0
        return self._outputs[key]


def _digest(feed: Mapping[str, Any], names: Sequence[str]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for n in names:
        arr = np.ascontiguousarray(feed[n])
        h.update(f"{n}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(memoryview(arr).cast("B"))  # the buffer itself: no copy of a batch-32 image feed
    return h.digest()
