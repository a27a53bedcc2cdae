"""Hugging Face transformers built from small configs, random init.

Each model sits in a thin wrapper whose ``forward`` names its inputs
(``input_ids``, ``attention_mask``, ...) and returns one tensor, so every
exporter sees the same positional signature and the same single output.
Text sequences are short (24 tokens) to keep the full run within budget.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from benchmarks.inputs import audio_with_mask, images, random_tensor, token_ids
from benchmarks.model_spec import ModelSpec

VOCAB = 1000
SEQ = 24
TINY: dict[str, Any] = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}


class MaskedTextModel(nn.Module):
    """``(input_ids, attention_mask) -> output[key]``."""

    def __init__(self, model: nn.Module, key: str) -> None:
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask)[self.key]


class MaskedAudioModel(nn.Module):
    """``(input_values, attention_mask) -> last_hidden_state``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_values=input_values, attention_mask=attention_mask).last_hidden_state


class SingleInputModel(nn.Module):
    """``(tensor) -> output[key]``, calling the model with keyword ``arg``."""

    def __init__(self, model: nn.Module, arg: str, key: str) -> None:
        super().__init__()
        self.model = model
        self.arg = arg
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(**{self.arg: x})[self.key]


def text_model(model_cls: str, config_cls: str, key: str = "last_hidden_state", **config: Any) -> Callable[[], nn.Module]:
    """A builder of ``transformers.<model_cls>(<config_cls>(**config))`` taking ``(input_ids, attention_mask)``."""

    def build() -> nn.Module:
        import transformers

        cfg = getattr(transformers, config_cls)(**config)
        return MaskedTextModel(getattr(transformers, model_cls)(cfg), key)

    return build


def _bert() -> Callable[[], nn.Module]:
    return text_model("BertModel", "BertConfig", vocab_size=VOCAB, **TINY)


def _distilbert() -> Callable[[], nn.Module]:
    return text_model("DistilBertModel", "DistilBertConfig", vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, hidden_dim=128)


def _roberta() -> Callable[[], nn.Module]:
    return text_model("RobertaModel", "RobertaConfig", vocab_size=VOCAB, max_position_embeddings=64, **TINY)


def _albert() -> Callable[[], nn.Module]:
    return text_model("AlbertModel", "AlbertConfig", vocab_size=VOCAB, embedding_size=32, **TINY)


def _gpt2() -> Callable[[], nn.Module]:
    return text_model(
        "GPT2LMHeadModel", "GPT2Config", key="logits",
        vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4, use_cache=False,
        bos_token_id=0, eos_token_id=2,
    )


def _llama() -> Callable[[], nn.Module]:
    return text_model(
        "LlamaModel", "LlamaConfig",
        vocab_size=VOCAB, num_key_value_heads=2, max_position_embeddings=64, use_cache=False, **TINY,
    )


def _t5_encoder() -> Callable[[], nn.Module]:
    return text_model(
        "T5EncoderModel", "T5Config",
        vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, use_cache=False,
    )


def _vit() -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from transformers import ViTConfig, ViTForImageClassification

        cfg = ViTConfig(image_size=224, patch_size=16, num_labels=10, **TINY)
        return SingleInputModel(ViTForImageClassification(cfg), "pixel_values", "logits")

    return build


def wav2vec2_model(**config: Any) -> Callable[[], nn.Module]:
    """A builder of a small ``Wav2Vec2Model`` (3 conv layers, stable layer norm); ``config`` overrides ``TINY``."""

    def build() -> nn.Module:
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        cfg = Wav2Vec2Config(
            conv_dim=(32, 32, 32), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
            feat_extract_norm="layer", do_stable_layer_norm=True,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, **(TINY | config),
        )
        return MaskedAudioModel(Wav2Vec2Model(cfg))

    return build


def _whisper_encoder() -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        cfg = WhisperConfig(
            num_mel_bins=80, d_model=64, encoder_layers=2, encoder_attention_heads=4,
            encoder_ffn_dim=128, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=128,
            max_source_positions=32, vocab_size=VOCAB,
            pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=0,
        )
        return SingleInputModel(WhisperEncoder(cfg), "input_features", "last_hidden_state")

    return build


_TEXT_INPUTS = ("input_ids", "attention_mask")


def _text_spec(name: str, build: Callable[[], nn.Module], *, quick: bool = False, low: int = 0, note: str = "") -> ModelSpec:
    return ModelSpec(
        name=f"hf/{name}", build=build, make_inputs=token_ids(VOCAB, SEQ, low=low),
        input_names=_TEXT_INPUTS, batch_dims=(0, 0), quick=quick, note=note,
    )


SPECS: tuple[ModelSpec, ...] = (
    _text_spec("bert", _bert(), quick=True, note="token_type_ids buffer expanded to the batch"),
    _text_spec("distilbert", _distilbert()),
    _text_spec("roberta", _roberta(), low=2, note="position ids from a cumsum over the mask of non-pad ids"),
    _text_spec("albert", _albert()),
    _text_spec("gpt2", _gpt2(), note="causal and padding masks combined; LM head"),
    _text_spec("llama", _llama(), note="rotary embeddings, grouped-query attention"),
    _text_spec("t5_encoder", _t5_encoder(), note="relative position buckets"),
    ModelSpec(name="hf/vit", build=_vit(), make_inputs=images(3, 224, 224), input_names=("pixel_values",)),
    ModelSpec(
        name="hf/wav2vec2", build=wav2vec2_model(), make_inputs=audio_with_mask(4000),
        input_names=("input_values", "attention_mask"), batch_dims=(0, 0),
        note="mask is downsampled through the conv feature extractor's output lengths",
    ),
    ModelSpec(
        name="hf/whisper_encoder", build=_whisper_encoder(), make_inputs=random_tensor(80, 64),
        input_names=("input_features",),
        note="Whisper's encoder takes no attention mask: its forward ignores one",
    ),
)
