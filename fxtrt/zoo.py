"""The CLI's model zoo: build a model and example inputs from command-line text.

It sits beside the command, not in the capture layer, because it changes the process: it sets
``YOLO_CONFIG_DIR`` for ultralytics and registers a ``path/to/file.py`` module in ``sys.modules``
while the factory runs. Only :mod:`fxtrt.cli` (and tests) import it.

Model specs, all offline with random weights (nothing is downloaded):

- ``torchvision:resnet50``
- ``timm:resnet18`` or ``timm:volo_d1_224:{"img_size": 64}`` (JSON: keyword arguments of ``create_model``)
- ``transformers:BertModel`` or ``transformers:BertModel:{"num_hidden_layers": 2}`` (JSON: config overrides)
- ``ultralytics:yolov8n.yaml`` (the task's model class, chosen from the yaml)
- ``package.module:factory`` or ``path/to/file.py:factory``

Inputs look like ``1x3x224x224`` or ``1x16:int64``.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import logging
import os
import sys
import tempfile
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import torch

from fxtrt.errors import ConfigError, FxtrtError

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32, "float": torch.float32, "float64": torch.float64, "float16": torch.float16,
    "int64": torch.int64, "long": torch.int64, "int32": torch.int32, "bool": torch.bool,
}
SPEC_FORMS = ("torchvision:NAME", "timm:NAME[:JSON]", "transformers:CLASS[:JSON]", "ultralytics:FILE.yaml",
              "package.module:factory", "path/to/file.py:factory")
# The optional extra that brings each model library (see pyproject.toml).
EXTRA = "fxtrt[bench]"


def load_model(spec: str) -> torch.nn.Module:
    """The module named by ``spec``, in eval mode."""
    prefix, sep, rest = spec.partition(":")
    library = _LIBRARIES.get(prefix)
    if library is not None:
        if not rest:
            raise ConfigError(f"model spec {spec!r} names no model; expected one of {', '.join(SPEC_FORMS)}")
        model = library(rest, spec)
    else:
        source, sep, attr = spec.rpartition(":")
        if not sep or not source or not attr:
            raise ConfigError(f"model spec {spec!r} must look like one of {', '.join(SPEC_FORMS)}")
        module = _import(source)
        factory = getattr(module, attr, None)
        if factory is None:
            raise ConfigError(f"{source} has no attribute {attr!r}")
        model = _call_factory(factory, spec) if callable(factory) and not isinstance(factory, torch.nn.Module) else factory
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"{spec} did not give a torch.nn.Module but a {type(model).__name__}")
    return model.eval()


def _library(name: str) -> ModuleType:
    """The optional model library ``name``, or a one-line ConfigError saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != name:
            raise ConfigError(f"{name} is installed but cannot be imported: {exc}") from exc
        raise ConfigError(f"{name} is not installed: pip install '{EXTRA}'") from exc


def _json_object(text: str, spec: str, what: str) -> dict[str, Any]:
    """The JSON after a spec's name; the text itself holds ':' so it is everything after the name."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"model spec {spec!r}: {what} are not valid JSON ({exc.msg} at char {exc.pos}): {text}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"model spec {spec!r}: {what} must be a JSON object, got {type(value).__name__}")
    return value


def _torchvision_model(name: str, spec: str) -> torch.nn.Module:
    torchvision = _library("torchvision")
    try:
        model = torchvision.models.get_model(name, weights=None)
    except ValueError as exc:
        raise ConfigError(f"torchvision has no model {name!r}", hint="see torchvision.models.list_models()") from exc
    _fill_zero_parameters(model, spec)
    return model


def _timm_model(rest: str, spec: str) -> torch.nn.Module:
    """``timm.create_model(NAME, pretrained=False, **JSON)``."""
    name, _, text = rest.partition(":")
    kwargs = _json_object(text, spec, "the keyword arguments of timm.create_model")
    timm = _library("timm")
    if not timm.is_model(name):
        raise ConfigError(f"timm has no model {name!r}", hint="see timm.list_models()")
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(f"timm could not build {name} with {kwargs}: {type(exc).__name__}: {exc}") from exc
    _fill_zero_parameters(model, spec)
    return model


def _transformers_model(rest: str, spec: str) -> torch.nn.Module:
    """The class's own config class with its defaults plus the JSON's overrides, randomly initialised."""
    class_name, _, text = rest.partition(":")
    overrides = _json_object(text, spec, "the config overrides")
    transformers = _library("transformers")
    try:
        cls = getattr(transformers, class_name)
    except (AttributeError, ImportError) as exc:
        raise ConfigError(f"transformers has no class {class_name!r}",
                          hint="give a model class such as BertModel or GPT2LMHeadModel") from exc
    config_class = getattr(cls, "config_class", None)
    if not isinstance(cls, type) or not issubclass(cls, transformers.PreTrainedModel) or config_class is None:
        raise ConfigError(f"transformers.{class_name} is not a model class with a config class",
                          hint="give a model class such as BertModel or GPT2LMHeadModel")
    defaults = config_class()
    # transformers keeps unknown keyword arguments as attributes: a typo would be silently ignored.
    unknown = [k for k in overrides if not hasattr(defaults, k)]
    if unknown:
        raise ConfigError(f"{config_class.__name__} has no attribute {', '.join(map(repr, unknown))} "
                          f"(config overrides of {spec!r})")
    try:
        config = config_class(**overrides)
        model = cls(config)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(f"transformers could not build {class_name} with {overrides}: {type(exc).__name__}: {exc}") from exc
    _fill_zero_parameters(model, spec)
    return model


def _ultralytics_model(path: str, spec: str) -> torch.nn.Module:
    """The model class of the yaml's task (detect, segment, pose, classify, obb, ...), untrained."""
    if Path(path).suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(f"model spec {spec!r}: ultralytics models are built from a yaml such as yolov8n.yaml",
                          hint="a .pt file holds trained weights; fxtrt builds from the yaml, offline")
    # ultralytics writes a settings file on import, to YOLO_CONFIG_DIR or the user's config dir.
    os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "fxtrt-ultralytics"))
    _library("ultralytics")
    from ultralytics.nn import tasks

    try:
        cfg = tasks.yaml_model_load(path)
    except FileNotFoundError as exc:
        raise ConfigError(f"ultralytics has no model yaml {path!r}: {exc}") from exc
    task = tasks.guess_model_task(cfg)
    model_class = getattr(tasks, _ULTRALYTICS_TASKS.get(task, ""), None)
    if model_class is None:
        raise ConfigError(f"model spec {spec!r}: ultralytics task {task!r} has no model class fxtrt knows",
                          hint=f"tasks: {', '.join(sorted(_ULTRALYTICS_TASKS))}")
    log.info("%s: %s task, %s", spec, task, model_class.__name__)
    return model_class(cfg, verbose=False)


_ULTRALYTICS_TASKS = {
    "detect": "DetectionModel", "segment": "SegmentationModel", "pose": "PoseModel",
    "classify": "ClassificationModel", "obb": "OBBModel", "semantic": "SemanticSegmentationModel",
    "depth": "DepthModel",
}
_LIBRARIES: dict[str, Callable[[str, str], torch.nn.Module]] = {
    "torchvision": _torchvision_model, "timm": _timm_model, "transformers": _transformers_model,
    "ultralytics": _ultralytics_model,
}


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


def _call_factory(factory: Callable[[], Any], spec: str) -> Any:
    """``factory()``; what it raises is the user's code failing, a ConfigError at its line, not a traceback."""
    try:
        return factory()
    except FxtrtError:
        raise
    except Exception as exc:
        try:
            home, line = inspect.getsourcefile(factory), inspect.getsourcelines(factory)[1]
        except (TypeError, OSError):
            home, line = None, None
        source = _raised_at(exc, home) or (f"{home}:{line}" if home else None)
        raise ConfigError(f"model spec {spec!r}: the factory raised {type(exc).__name__}: {exc}", source=source,
                          hint="fix the factory, or run it in Python to see the full traceback") from exc


def _raised_at(exc: BaseException, filename: str | None) -> str | None:
    """``file:line`` of the deepest frame of ``exc`` in ``filename`` (the user's file), else the deepest one."""
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if filename is not None and f.filename == filename] or frames[-1:]
    return f"{mine[-1].filename}:{mine[-1].lineno}" if mine else None


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
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise _import_error(str(path), exc) from exc
        return module
    try:
        return importlib.import_module(source)
    except ImportError as exc:
        raise ConfigError(f"cannot import {source!r}: {exc}") from exc
    except Exception as exc:
        raise _import_error(source, exc) from exc


def _import_error(source: str, exc: Exception) -> ConfigError:
    """The user's module failed to import: a syntax error at its line, or what its top level raised."""
    if isinstance(exc, SyntaxError):
        return ConfigError(f"cannot import {source}: syntax error: {exc.msg}",
                           source=f"{exc.filename}:{exc.lineno}" if exc.filename and exc.lineno else None)
    return ConfigError(f"cannot import {source}: {type(exc).__name__}: {exc}", source=_raised_at(exc, source))


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
