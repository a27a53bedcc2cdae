"""The one place that shrinks a transformers config, so every model type builds small and the same way.

Each rule names a config attribute and the value it shrinks to; it applies wherever a config (or
one of its sub-configs: ``text_config``, ``vision_config``, ...) has that attribute as an int larger
than the rule's value. Two levels, tried in order:

- ``tiny``: depth, width, heads, vocabulary, image and audio sizes (``DEPTH``, ``WIDTH``);
  a multi-stage vision config (one with a ``depths`` list, whose widths derive from each other)
  gets one block per stage and keeps its widths;
- ``layers``: depth only, for the types whose tiny widths break an invariant of theirs.

Both levels cap the image size at 224 and an audio encoder's positions at 1500 (``SIZES``).

Both levels are tried, tiny first (the prepare step moves on when a level's model does not
build or run); a type that fits neither, or only above ``MAX_PARAMS``, is reported with each
level's reason. Token ids the config reserves (``*_token_id``, ``*_token_index``) beyond the new
vocabulary move to its top ``RESERVED`` ids, which the inputs never draw.
"""
from __future__ import annotations

from typing import Any

import torch

LEVELS = ("tiny", "layers")
MAX_PARAMS = 150_000_000
VOCAB = 1024
RESERVED = 16  # the vocabulary's top ids: special tokens live there, inputs draw below
DEPTH = {name: 2 for name in ("num_hidden_layers", "num_layers", "n_layer", "n_layers", "encoder_layers",
                              "decoder_layers", "num_encoder_layers", "num_decoder_layers")}
WIDTH = {
    "hidden_size": 64, "d_model": 64, "n_embd": 64, "n_embed": 64, "dim": 64, "embed_dim": 64,
    "word_embed_proj_dim": 64, "projection_dim": 32,
    "intermediate_size": 128, "ffn_dim": 128, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128, "d_ff": 128,
    "n_inner": 128, "hidden_dim": 128, "moe_intermediate_size": 64, "shared_expert_intermediate_size": 64,
    "num_attention_heads": 2, "n_head": 2, "n_heads": 2, "num_heads": 2, "encoder_attention_heads": 2,
    "decoder_attention_heads": 2, "num_key_value_heads": 1, "d_kv": 32, "head_dim": 32,
    "kv_lora_rank": 32, "q_lora_rank": 32, "qk_rope_head_dim": 16, "qk_nope_head_dim": 16, "v_head_dim": 32,
    "num_experts": 4, "num_local_experts": 4, "num_experts_per_tok": 2,
    "vocab_size": VOCAB, "image_size": 64, "max_source_positions": 64,
}
SIZES = {"image_size": 224, "max_source_positions": 1500}  # caps at every level (tiny goes lower, by WIDTH)
ALWAYS = {"use_cache": False}  # a base model returns its hidden states, not a cache object


def _is_subconfig(value: Any) -> bool:
    return isinstance(value, dict) and "model_type" in value


def _shrink_depth(d: dict[str, Any]) -> None:
    if isinstance(d.get("depths"), list):  # multi-stage: num_layers counts stages, derived from depths
        d["depths"] = [1] * len(d["depths"])
        return
    for name, value in DEPTH.items():
        old = d.get(name)
        if isinstance(old, int) and not isinstance(old, bool) and old > value:
            d[name] = value
            for key, seq in list(d.items()):  # per-layer lists (layer_types, ...) follow the depth
                if "layer" in key and isinstance(seq, list) and len(seq) == old:
                    d[key] = seq[:value]


def _cap(d: dict[str, Any], rules: dict[str, int]) -> None:
    for name, value in rules.items():
        old = d.get(name)
        if isinstance(old, int) and not isinstance(old, bool) and old > value:
            d[name] = value


def _move_reserved_ids(d: dict[str, Any]) -> None:
    vocab = d.get("vocab_size")
    if not isinstance(vocab, int):
        return
    special = sorted(k for k, v in d.items() if (k.endswith("_token_id") or k.endswith("_token_index"))
                     and isinstance(v, int) and not isinstance(v, bool) and v >= vocab)
    for i, key in enumerate(special):
        d[key] = vocab - 1 - i % RESERVED


def shrink(d: dict[str, Any], level: str) -> dict[str, Any]:
    """A shrunk copy of a config dict (``config.to_dict()``), sub-configs included."""
    if level not in LEVELS:
        raise ValueError(f"unknown shrink level {level!r}; choose from {LEVELS}")
    out = {k: shrink(v, level) if _is_subconfig(v) else v for k, v in d.items()}
    _shrink_depth(out)
    _cap(out, SIZES)
    if level == "tiny" and not isinstance(out.get("depths"), list):
        _cap(out, WIDTH)
    _move_reserved_ids(out)
    out.update({k: v for k, v in ALWAYS.items() if k in out})
    return out


def model_class(model_type: str) -> type:
    """The base model class the AutoModel mapping names for ``model_type`` (the first, if several)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    names = MODEL_MAPPING_NAMES[model_type]
    return getattr(transformers, names if isinstance(names, str) else names[0])


def tiny_config(model_type: str, level: str) -> Any:
    """``model_type``'s config class at its defaults, shrunk at ``level``."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config_class = CONFIG_MAPPING[model_type]
    return config_class.from_dict(shrink(config_class().to_dict(), level))


def count_params(cls: type, config: Any) -> int | None:
    """Parameters of ``cls(config)`` built on the meta device (no memory, no init); None if that fails."""
    try:
        with torch.device("meta"):
            model = cls(config)
    except Exception:  # noqa: BLE001 - some inits need real tensors; the real build decides then
        return None
    return sum(p.numel() for p in model.parameters())


def usable_levels(model_type: str) -> tuple[list[str], list[str]]:
    """The levels whose config ``model_type`` accepts within ``MAX_PARAMS`` (counted on the meta device;
    building and running the model is the eager reference's test), and why each other level is not."""
    usable: list[str] = []
    reasons: list[str] = []
    for level in LEVELS:
        try:
            cls = model_class(model_type)
            n = count_params(cls, tiny_config(model_type, level))
        except Exception as exc:  # noqa: BLE001 - the reason is the result
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            reasons.append(f"{level}: {type(exc).__name__}: {first}")
            continue
        if n is not None and n > MAX_PARAMS:
            reasons.append(f"{level}: {n / 1e6:.0f}M parameters > {MAX_PARAMS / 1e6:.0f}M")
        else:
            usable.append(level)
    return usable, reasons
