"""torchvision classifiers, random weights (``weights=None``).

maxvit_t was tried and left out: its export alone takes 1-2 minutes per
exporter on 2 cores, which pushed the full run past its hour.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from benchmarks.inputs import images
from benchmarks.model_spec import ModelSpec


def _torchvision(name: str, **kwargs: Any) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, **kwargs)

    return build


def _spec(name: str, size: int = 224, *, quick: bool = False, note: str = "", **kwargs: Any) -> ModelSpec:
    return ModelSpec(
        name=f"tv/{name}",
        build=_torchvision(name, **kwargs),
        make_inputs=images(3, size, size),
        quick=quick,
        note=note,
    )


SPECS: tuple[ModelSpec, ...] = (
    _spec("resnet18"),
    _spec("resnet50", note="the seed's own example"),
    _spec("mobilenet_v2"),
    _spec("mobilenet_v3_small"),
    _spec("shufflenet_v2_x1_0", note="channel shuffle: view(b, groups, c/groups, h, w)"),
    _spec("efficientnet_b0"),
    _spec("regnet_y_400mf"),
    _spec("densenet121"),
    _spec("convnext_tiny", note="permute + LayerNorm2d"),
    _spec("googlenet", aux_logits=False, init_weights=True),
    _spec("inception_v3", 299, aux_logits=False, init_weights=True),
    _spec("squeezenet1_1", quick=True),
    _spec("mnasnet0_5"),
    _spec("vit_b_16", note="zero-initialised head and class token are filled"),
    _spec("swin_t", note="windowed attention, shifted windows"),
)
