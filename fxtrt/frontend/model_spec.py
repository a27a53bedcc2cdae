"""Build a model and example inputs from command-line text.

``torchvision:resnet50`` (random weights: nothing is downloaded), ``package.module:factory`` or
``path/to/file.py:factory``; inputs like ``1x3x224x224`` or ``1x16:int64``.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from pathlib import Path

import torch

from fxtrt.errors import ConfigError

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32, "float": torch.float32, "float64": torch.float64, "float16": torch.float16,
    "int64": torch.int64, "long": torch.int64, "int32": torch.int32, "bool": torch.bool,
}


def load_model(spec: str) -> torch.nn.Module:
    """The module named by ``spec``, in eval mode."""
    source, sep, attr = spec.rpartition(":")
    if not sep or not source or not attr:
        raise ConfigError(f"model spec {spec!r} must look like torchvision:NAME, package.module:factory or file.py:factory")
    if source == "torchvision":
        import torchvision

        try:
            model = torchvision.models.get_model(attr, weights=None)
        except ValueError as exc:
            raise ConfigError(f"torchvision has no model {attr!r}", hint="see torchvision.models.list_models()") from exc
        _fill_zero_parameters(model, spec)
    else:
        module = _import(source)
        factory = getattr(module, attr, None)
        if factory is None:
            raise ConfigError(f"{source} has no attribute {attr!r}")
        model = factory() if callable(factory) and not isinstance(factory, torch.nn.Module) else factory
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"{spec} did not give a torch.nn.Module but a {type(model).__name__}")
    return model.eval()


def _fill_zero_parameters(model: torch.nn.Module, spec: str) -> None:
    """Random-init models with all-zero tensors (ViT's head) output constants; verifying those proves nothing."""
    filled = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1 and not p.any():
                torch.nn.init.normal_(p, std=0.02)
                filled.append(name)
    if filled:
        log.info("%s: gave random values to all-zero parameters %s, so verification is meaningful",
                 spec, ", ".join(filled))


def _import(source: str):
    if source.endswith(".py") or "/" in source or "\\" in source:
        path = Path(source).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"no such file: {path}")
        name = f"fxtrt_user_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ConfigError(f"cannot import {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(source)
    except ImportError as exc:
        raise ConfigError(f"cannot import {source!r}: {exc}") from exc


def parse_input(text: str, generator: torch.Generator) -> torch.Tensor:
    """``1x3x224x224`` → random normal float32; ``1x16:int64`` → ints in [0, 100); ``:bool`` → random mask."""
    shape_text, _, dtype_text = text.partition(":")
    try:
        shape = tuple(int(s) for s in shape_text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--input {text!r}: expected a shape like 1x3x224x224, optionally :int64") from None
    if not shape or any(s < 1 for s in shape):
        raise ConfigError(f"--input {text!r}: every dim must be a positive int")
    dtype = DTYPES.get(dtype_text or "float32")
    if dtype is None:
        raise ConfigError(f"--input {text!r}: unknown dtype {dtype_text!r}; choose one of {sorted(DTYPES)}")
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator).to(dtype)
    if dtype == torch.bool:
        return torch.rand(shape, generator=generator) > 0.5
    return torch.randint(0, 100, shape, generator=generator, dtype=dtype)
