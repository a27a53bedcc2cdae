"""timm models, random weights (``pretrained=False``), at each model's default input size."""

from __future__ import annotations

from typing import Callable

import torch

from benchmarks.inputs import images
from benchmarks.model_spec import ModelSpec


def _timm(name: str) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        import timm

        return timm.create_model(name, pretrained=False)

    return build


def _spec(name: str, size: int, note: str) -> ModelSpec:
    return ModelSpec(name=f"timm/{name}", build=_timm(name), make_inputs=images(3, size, size), note=note)


SPECS: tuple[ModelSpec, ...] = (
    _spec("ecaresnet26t", 256, "efficient channel attention (ECA)"),
    _spec("resnest14d", 224, "split attention; reshape(batch, radix, ...)"),
    _spec("swin_tiny_patch4_window7_224", 224, "windowed attention"),
    _spec("halonet26t", 256, "halo (blocked local) attention"),
    _spec("mobilevit_xxs", 256, "unfold into patches via reshape"),
    _spec("levit_128s", 224, "attention with BatchNorm; attention-bias indexing"),
    _spec("deit_tiny_patch16_224", 224, "ViT: class token expand to batch"),
    _spec("convnext_atto", 224, "LayerNorm2d"),
    _spec("xcit_nano_12_p16_224", 224, "cross-covariance attention, Fourier position encoding"),
    _spec("ghostnet_100", 224, "ghost modules, SE"),
)
