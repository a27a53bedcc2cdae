"""How each zoo model is built, fed and made dynamic: its plan (variants to try) and its ``ModelSpec``.

``plan(model_id)`` runs in the prepare step's child; ``spec_for(key)`` runs in every child (it is
the ``resolve`` the shared worker takes), and rebuilds the same spec from the key alone.

- timm: ``pretrained_cfg.input_size``, capped at 256 unless ``fixed_input_size``; a fixed size
  above 256 is tried with ``img_size=256`` first.
- torchvision: ``weights=None`` (and ``weights_backbone=None``); the default weights' crop size,
  capped at 256; video clips of 16 frames; RAFT takes two images whose size is a multiple of 8.
- ultralytics: 256 x 256, sizes in steps of the model's largest stride (32, or 64 for a P6 model).
- transformers: see :mod:`benchmarks.zoo.hf_specs`.
- ``module/pkg.module:factory``: the factory's model, fed ``zoo_input_shape`` (its class
  attribute; default 3 x 32 x 32), batch-only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from benchmarks.inputs import NO_SIZES, InputFactory, images, random_tensor
from benchmarks.model_spec import DynamicDim, ModelSpec
from benchmarks.zoo.variants import CAP, Variant, size_dim, split_key

VIDEO_FRAMES = 16


@dataclass
class Plan:
    """The variants to try in order, the model's family, and why any planned choice was dropped."""

    family: str
    variants: list[Variant] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def first_tensor(value: Any) -> torch.Tensor:
    """The first tensor of a nested output (a ``ModelOutput`` is a dict of its non-None fields)."""
    if isinstance(value, torch.Tensor):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else ()
    for item in items:
        try:
            return first_tensor(item)
        except TypeError:
            continue
    raise TypeError(f"the model's output {type(value).__name__} holds no tensor")


class FirstTensor(nn.Module):
    """``model(x)``'s first tensor: a detector's decoded boxes, without its raw per-level maps."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return first_tensor(self.model(x))


def _load(spec: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from fxtrt.zoo import load_model

        return load_model(spec)

    return build


def _image_spec(key: str, build: Callable[[], nn.Module], v: Variant, dim: DynamicDim | None,
                factory: Callable[[Any], InputFactory] = lambda s: images(3, s, s), sites: tuple[int, ...] = (2, 3),
                n_inputs: int = 1) -> ModelSpec:
    """A spec fed images (or clips) whose H and W share the ``size`` dim, or are fixed at ``v.size``."""
    one = factory("size" if dim else v.size)

    def make(batch: int, gen: torch.Generator, sizes: Any = NO_SIZES) -> tuple[torch.Tensor, ...]:
        return tuple(t for _ in range(n_inputs) for t in one(batch, gen, sizes))

    dynamic = {i: {d: dim for d in sites} for i in range(n_inputs)} if dim else {}
    names = ("x",) if n_inputs == 1 else tuple(f"image{i + 1}" for i in range(n_inputs))
    return ModelSpec(key, build, make, input_names=names, batch_dims=(0,) * n_inputs, dynamic=dynamic)


# --- timm ---------------------------------------------------------------------------------------

def _timm_cfg(name: str) -> tuple[int, int, int, bool]:
    """(channels, default side, smallest side, fixed) from the model's pretrained_cfg."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        raise KeyError(f"timm has no model {name!r}")
    channels, side = cfg.input_size[0], cfg.input_size[1]
    low = cfg.min_input_size[1] if cfg.min_input_size else 32
    return channels, side, low, bool(cfg.fixed_input_size)


def _timm_family(name: str) -> str:
    """The timm module that defines ``name`` (resnet, vision_transformer, ...)."""
    import timm

    return next((m for m in timm.list_modules() if name in timm.list_models(module=m)), "")


def timm_plan(name: str) -> Plan:
    _, side, low, fixed = _timm_cfg(name)
    family = _timm_family(name)
    if not fixed:
        opt = max(low, min(side, CAP))
        return Plan(family, [Variant("size", opt), Variant("", opt)])
    if side > CAP:
        return Plan(family, [Variant("", CAP, img=CAP), Variant("", side)])
    return Plan(family, [Variant("", side)])


def timm_spec(key: str, name: str, v: Variant) -> ModelSpec:
    channels, _, low, _ = _timm_cfg(name)
    kwargs = json.dumps({"img_size": v.img}) if v.img else ""
    build = _load(f"timm:{name}" + (f":{kwargs}" if kwargs else ""))
    dim = size_dim(v.size, low) if v.dim else None
    return _image_spec(key, build, v, dim, lambda s: images(channels, s, s))


# --- torchvision --------------------------------------------------------------------------------

def _tv_task(name: str) -> str:
    from benchmarks.zoo.catalog import tv_entries

    return next((e.family for e in tv_entries() if e.id == f"tv/{name}"), "classification")


def _tv_side(name: str) -> tuple[int, int]:
    """The default weights' crop side capped at 256, and the smallest side their meta allows."""
    import torchvision.models as tvm

    try:
        weights = tvm.get_model_weights(name).DEFAULT
        crop = weights.transforms().crop_size
        low = weights.meta.get("min_size", (32, 32))[0]
        return min(CAP, crop[0] if isinstance(crop, (list, tuple)) else crop), max(32, low)
    except Exception:  # noqa: BLE001 - a model without weights metadata gets ImageNet's size
        return 224, 32


def _tv_build(name: str) -> Callable[[], nn.Module]:
    """``get_model(name, weights=None)``, and ``weights_backbone=None`` where the builder takes it (a
    detector or segmenter would otherwise download its backbone's ImageNet weights)."""

    def build() -> nn.Module:
        import inspect

        import torchvision.models as tvm

        takes = inspect.signature(tvm.get_model_builder(name)).parameters
        return tvm.get_model(name, weights=None, **({"weights_backbone": None} if "weights_backbone" in takes else {}))

    return build


def tv_plan(name: str) -> Plan:
    side, _ = _tv_side(name)
    return Plan(_tv_task(name), [Variant("size", side), Variant("", side)])


def tv_spec(key: str, name: str, v: Variant) -> ModelSpec:
    task = _tv_task(name)
    _, low = _tv_side(name)
    build = _tv_build(name)
    if task == "video":
        dim = size_dim(v.size, low) if v.dim else None
        return _image_spec(key, build, v, dim, lambda s: random_tensor(3, VIDEO_FRAMES, s, s), sites=(3, 4))
    if task == "optical_flow":
        dim = size_dim(v.size, max(low, 128), step=8) if v.dim else None
        return _image_spec(key, build, v, dim, n_inputs=2)
    return _image_spec(key, build, v, size_dim(v.size, low) if v.dim else None)


# --- ultralytics --------------------------------------------------------------------------------

# Heads whose model class the yaml's task does not name (fxtrt.zoo picks by task alone).
ULTRALYTICS_HEADS = (("RTDETRDecoder", "RTDETRDetectionModel"), ("WorldDetect", "WorldModel"),
                     ("YOLOESegment", "YOLOESegModel"), ("YOLOEDetect", "YOLOEModel"))


def _ultralytics_build(name: str) -> nn.Module:
    from benchmarks.zoo.catalog import ultralytics_root

    path = ultralytics_root() / f"{name}.yaml"
    text = path.read_text()
    special = next((cls for head, cls in ULTRALYTICS_HEADS if head in text), None)
    if special is None:
        return _load(f"ultralytics:{path}")()
    from ultralytics.nn import tasks

    return getattr(tasks, special)(str(path), verbose=False).eval()


def ultralytics_plan(name: str) -> Plan:
    """Sizes in steps of the model's largest stride (32, or 64 for a P6 model), from 256."""
    stride = getattr(_ultralytics_build(name), "stride", None)
    step = max(32, int(stride.max())) if isinstance(stride, torch.Tensor) else 32
    side = -(-CAP // step) * step
    return Plan(name.split("/")[0], [Variant("size", side, step=step), Variant("", side)])


def ultralytics_spec(key: str, name: str, v: Variant) -> ModelSpec:
    dim = size_dim(v.size, 64, step=v.step or 32) if v.dim else None
    return _image_spec(key, lambda: FirstTensor(_ultralytics_build(name)), v, dim)


# --- a model of one's own -----------------------------------------------------------------------

def module_spec(key: str, name: str, v: Variant) -> ModelSpec:
    import importlib

    source, _, attr = name.rpartition(":")
    shape = tuple(getattr(getattr(importlib.import_module(source), attr), "zoo_input_shape", (3, 32, 32)))
    return ModelSpec(key, _load(name), random_tensor(*shape))


# --- dispatch -----------------------------------------------------------------------------------

def plan(model_id: str) -> Plan:
    """The variants to try for ``model_id`` (imports its library; may raise for an unknown model)."""
    from benchmarks.zoo import hf_specs

    zoo, _, name = model_id.partition("/")
    planners: dict[str, Callable[[str], Plan]] = {
        "timm": timm_plan, "tv": tv_plan, "ultralytics": ultralytics_plan, "hf": hf_specs.hf_plan,
        "module": lambda n: Plan("module", [Variant()]),
    }
    if zoo not in planners:
        raise KeyError(f"unknown zoo in model id {model_id!r}")
    return planners[zoo](name)


def spec_for(key: str) -> ModelSpec:
    """The ``ModelSpec`` of a job key ``<model id>#<variant>``: the worker's ``resolve``."""
    from benchmarks.zoo import hf_specs

    model_id, variant = split_key(key)
    zoo, _, name = model_id.partition("/")
    makers: dict[str, Callable[[str, str, Variant], ModelSpec]] = {
        "timm": timm_spec, "tv": tv_spec, "ultralytics": ultralytics_spec, "hf": hf_specs.hf_spec,
        "module": module_spec,
    }
    if zoo not in makers:
        raise KeyError(f"unknown zoo in job key {key!r}")
    return makers[zoo](key, name, variant)
