"""Input factories: make a valid batch of any size for a corpus model.

A factory is called as ``factory(batch, generator, sizes)`` and returns a
tuple of tensors.  A length given as a string (``images(3, "size", "size")``,
``token_ids(vocab, "seq")``) names a dynamic dim and is looked up in
``sizes`` (dim name -> size) at each call; an int is fixed.

Data (pixels, features, token ids) is drawn independently for each row, so a
graph that mixes rows up cannot pass by luck; masks keep a valid prefix of
at least half the sequence, with a different length per row.  Row 0 of every
batch pads a quarter, as the batch-1 export example does, so the example
itself exercises the padded path.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Callable, Mapping

import torch

Sizes = Mapping[str, int]
InputFactory = Callable[[int, torch.Generator, Sizes], tuple[torch.Tensor, ...]]
Length = int | str
NO_SIZES: Sizes = MappingProxyType({})


def resolve(length: Length, sizes: Sizes) -> int:
    """A fixed length, or the size of the dynamic dim it names."""
    if isinstance(length, int):
        return length
    if length not in sizes:
        raise KeyError(f"input length {length!r} names no dynamic dim of this model (sizes: {dict(sizes)})")
    return sizes[length]


def _valid_lengths(batch: int, seq: int, gen: torch.Generator) -> torch.Tensor:
    """Per-row valid lengths: row 0 pads a quarter, the others are random in [seq/2, seq]."""
    low = max(1, seq // 2)
    lengths = torch.randint(low, seq + 1, (batch,), generator=gen)
    lengths[0] = seq - max(1, seq // 4)
    return lengths


def _prefix_mask(lengths: torch.Tensor, seq: int) -> torch.Tensor:
    return torch.arange(seq).unsqueeze(0) < lengths.unsqueeze(1)


def random_tensor(*shape: Length, batch_dim: int = 0) -> InputFactory:
    """One float tensor; ``shape`` excludes the batch, which is inserted at ``batch_dim``."""

    def make(batch: int, gen: torch.Generator, sizes: Sizes = NO_SIZES) -> tuple[torch.Tensor, ...]:
        full = [resolve(n, sizes) for n in shape]
        full.insert(batch_dim, batch)
        return (torch.randn(*full, generator=gen),)

    return make


def images(channels: int = 3, height: Length = 224, width: Length = 224) -> InputFactory:
    """An NCHW image batch."""
    return random_tensor(channels, height, width)


def token_ids(vocab: int, length: Length, *, mask: bool = True, low: int = 0) -> InputFactory:
    """``input_ids`` (int64) and, if ``mask``, an int64 ``attention_mask`` with right padding."""

    def make(batch: int, gen: torch.Generator, sizes: Sizes = NO_SIZES) -> tuple[torch.Tensor, ...]:
        seq = resolve(length, sizes)
        ids = torch.randint(low, vocab, (batch, seq), generator=gen)
        if not mask:
            return (ids,)
        return ids, _prefix_mask(_valid_lengths(batch, seq, gen), seq).long()

    return make


def audio_with_mask(length: Length) -> InputFactory:
    """Raw audio ``(B, samples)`` and an int64 mask; padded samples are zero, as a feature extractor leaves them."""

    def make(batch: int, gen: torch.Generator, sizes: Sizes = NO_SIZES) -> tuple[torch.Tensor, ...]:
        samples = resolve(length, sizes)
        mask = _prefix_mask(_valid_lengths(batch, samples, gen), samples)
        audio = torch.randn(batch, samples, generator=gen) * mask
        return audio, mask.long()

    return make


def ids_ending_with(vocab: int, seq: int, eos_id: int) -> InputFactory:
    """Token ids whose tail is padded with ``eos_id`` (a decoder's ``tgt_in``)."""

    def make(batch: int, gen: torch.Generator, sizes: Sizes = NO_SIZES) -> tuple[torch.Tensor, ...]:
        ids = torch.randint(0, vocab, (batch, seq), generator=gen)
        ids[ids == eos_id] = (eos_id + 1) % vocab
        keep = _prefix_mask(_valid_lengths(batch, seq, gen), seq)
        return (torch.where(keep, ids, torch.full_like(ids, eos_id)),)

    return make


def features_with_mask(time: int, feat: int = 80) -> InputFactory:
    """Speech features ``(B, T, feat)`` and a bool mask ``(B, 1, T)``, as WeNet-style encoders take them."""

    def make(batch: int, gen: torch.Generator, sizes: Sizes = NO_SIZES) -> tuple[torch.Tensor, ...]:
        mask = _prefix_mask(_valid_lengths(batch, time, gen), time)
        feats = torch.randn(batch, time, feat, generator=gen) * mask.unsqueeze(-1)
        return feats, mask.unsqueeze(1)

    return make
