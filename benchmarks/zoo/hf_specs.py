"""transformers models in the zoo: a base model from a tiny config (:mod:`.hf_tiny`), fed what its users pass.

The model class's ``main_input_name`` decides the inputs:

- ``input_ids``: token ids and, where ``forward`` takes them, an ``attention_mask`` (right padding),
  for an encoder-decoder ``decoder_input_ids``, and for a text-image model (one with a
  ``vision_config``) ``pixel_values``; the sequence length is dynamic (``seq``);
- ``pixel_values``: an image at the config's ``image_size`` (128 without one), its size dynamic
  unless eager rejects other sizes (position embeddings that fix it), then batch-only;
- ``input_values``: raw audio and, where taken, its mask; the length is dynamic (``samples``);
- ``input_features``: spectrogram features, (mels, frames) or (frames, features), batch-only.

Any other main input is reported as not built, with its name. The model's first output tensor
(``last_hidden_state`` for most) is what is exported and judged.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from benchmarks.inputs import NO_SIZES, Sizes, audio_with_mask, images, random_tensor, token_ids
from benchmarks.model_spec import DynamicDim, ModelSpec
from benchmarks.zoo.hf_tiny import RESERVED, model_class, tiny_config, usable_levels
from benchmarks.zoo.specs import Plan, first_tensor
from benchmarks.zoo.variants import SAMPLES, SEQ, Variant, size_dim

KINDS = {"input_ids": "text", "pixel_values": "vision", "input_values": "audio", "input_features": "speech"}
CONV_SIDE = 128  # the side of a vision config without image_size
DECODER_LEN = 8
FRAMES = 64


class Keywords(nn.Module):
    """``model(**{name: input})`` for up to four positional inputs; returns the first output tensor.

    Named positional parameters, not ``*args``: exporters name and map inputs by the signature."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, x0: torch.Tensor, x1: torch.Tensor | None = None, x2: torch.Tensor | None = None,
                x3: torch.Tensor | None = None) -> torch.Tensor:
        values = (x0, x1, x2, x3)[: len(self.names)]
        return first_tensor(self.model(**dict(zip(self.names, values))))


def _sub(config: Any, name: str, default: Any = None) -> Any:
    """``config.name``, else the vision/text/audio sub-config's, else ``default``."""
    for c in (config, *(getattr(config, s, None) for s in ("vision_config", "text_config", "audio_config", "encoder_config"))):
        value = getattr(c, name, None) if c is not None else None
        if value is not None:
            return value
    return default


def _side(config: Any) -> int | None:
    size = _sub(config, "image_size")
    return size[0] if isinstance(size, (list, tuple)) else size


def _level_variants(kind: str, config: Any, level: str) -> list[Variant]:
    if kind == "text":
        return [Variant("seq", level=level), Variant("", level=level)]
    if kind == "audio":
        return [Variant("samples", level=level), Variant("", level=level)]
    if kind == "vision":  # eager decides: a model that takes one size only fails the first variant
        side = _side(config) or CONV_SIDE
        return [Variant("size", side, level=level), Variant("", side, level=level)]
    return [Variant("", level=level, layout="mel"), Variant("", level=level, layout="time")]


def hf_plan(model_type: str) -> Plan:
    levels, reasons = usable_levels(model_type)
    if not levels:
        return Plan("unbuilt", [], [f"no shrink level fits: {'; '.join(reasons)}"])
    cls = model_class(model_type)
    kind = KINDS.get(cls.main_input_name)
    if kind is None:
        return Plan(cls.main_input_name, [], [f"main input {cls.main_input_name!r}: the zoo feeds {', '.join(KINDS)}"])
    configs = {level: tiny_config(model_type, level) for level in levels}
    first = configs[levels[0]]
    family = kind + ("-seq2seq" if getattr(first, "is_encoder_decoder", False) else "")
    variants = [v for level in levels for v in _level_variants(kind, configs[level], level)]
    return Plan(family, variants, reasons)


def _then(make: Any, more: Any) -> Any:
    """One factory's inputs followed by another's."""

    def both(batch: int, gen: torch.Generator, sizes: Sizes = NO_SIZES) -> tuple[torch.Tensor, ...]:
        return (*make(batch, gen, sizes), *more(batch, gen, sizes))

    return both


def _with_decoder(make: Any, vocab: int) -> Any:
    """Append ``decoder_input_ids`` of ``DECODER_LEN`` tokens to another factory's inputs."""
    return _then(make, token_ids(vocab, DECODER_LEN, mask=False))


def _text(config: Any, v: Variant, takes: set[str], seq2seq: bool) -> tuple[Any, tuple[str, ...], dict[int, dict[int, DynamicDim]]]:
    vocab = max(2, _sub(config, "vocab_size", 1024) - RESERVED)
    mask = "attention_mask" in takes
    length = SEQ.name if v.dim else SEQ.opt
    make = token_ids(vocab, length, mask=mask)
    names = ("input_ids", "attention_mask") if mask else ("input_ids",)
    if seq2seq:  # the decoder reads DECODER_LEN tokens; only the encoder's sequence is dynamic
        make, names = _with_decoder(make, vocab), (*names, "decoder_input_ids")
    vision = getattr(config, "vision_config", None)
    if vision is not None and "pixel_values" in takes:  # a text-image model (CLIP-like) takes both
        side = _side(vision) or CONV_SIDE
        make, names = _then(make, images(getattr(vision, "num_channels", 3) or 3, side, side)), (*names, "pixel_values")
    dynamic = {i: {1: SEQ} for i in range(1 + mask)} if v.dim else {}
    return make, names, dynamic


def _audio(v: Variant, takes: set[str]) -> tuple[Any, tuple[str, ...], dict[int, dict[int, DynamicDim]]]:
    length = SAMPLES.name if v.dim else SAMPLES.opt
    if "attention_mask" in takes:
        names, make = ("input_values", "attention_mask"), audio_with_mask(length)
    else:
        names, make = ("input_values",), random_tensor(length)
    dynamic = {i: {1: SAMPLES} for i in range(len(names))} if v.dim else {}
    return make, names, dynamic


def _speech(config: Any, v: Variant, seq2seq: bool) -> tuple[Any, tuple[str, ...], dict[int, dict[int, DynamicDim]]]:
    mels = _sub(config, "num_mel_bins") or _sub(config, "feature_size") or 80
    positions = _sub(config, "max_source_positions")
    frames = 2 * positions if positions else FRAMES
    make = random_tensor(mels, frames) if v.layout == "mel" else random_tensor(frames, mels)
    names: tuple[str, ...] = ("input_features",)
    if seq2seq:
        make, names = _with_decoder(make, max(2, _sub(config, "vocab_size", 1024) - RESERVED)), (*names, "decoder_input_ids")
    return make, names, {}


def hf_spec(key: str, model_type: str, v: Variant) -> ModelSpec:
    cls, config = model_class(model_type), tiny_config(model_type, v.level or "tiny")
    kind = KINDS[cls.main_input_name]
    takes = set(inspect.signature(cls.forward).parameters)
    seq2seq = bool(getattr(config, "is_encoder_decoder", False)) and "decoder_input_ids" in takes
    if kind == "text":
        make, names, dynamic = _text(config, v, takes, seq2seq)
    elif kind == "audio":
        make, names, dynamic = _audio(v, takes)
    elif kind == "speech":
        make, names, dynamic = _speech(config, v, seq2seq)
    else:
        dim = size_dim(v.size) if v.dim else None
        make = images(_sub(config, "num_channels", 3), "size" if dim else v.size, "size" if dim else v.size)
        names, dynamic = ("pixel_values",), ({0: {2: dim, 3: dim}} if dim else {})

    def build() -> nn.Module:
        return Keywords(cls(config), names)

    return ModelSpec(key, build, make, input_names=names, batch_dims=(0,) * len(names), dynamic=dynamic)

