"""Model outputs torch.export has to flatten: transformers' caches, and types it cannot flatten.

A decoder held as its users hold it (``use_cache=True``, transformers' default) returns a
``DynamicCache``. transformers provides the pytree registration that lets torch.export flatten
one (``register_dynamic_cache_export_support``); fxtrt applies it before each export, so the
cache becomes named outputs (``past_key_values.0.key``, ``past_key_values.0.value``, ... see ``bind.output_names``)
and ``CompiledModel.__call__`` hands back a ``DynamicCache`` again. Any other output type torch
cannot flatten is named in the error, with what to do about it.
"""
from __future__ import annotations

import inspect
import re
import sys

import torch

from fxtrt.errors import CaptureError, ConfigError, FxtrtError
from fxtrt.frontend.bind import _Bound

_UNKNOWN_OUTPUT = re.compile(r"Found <class '([\w.]+)'> in output, which is not a known type")


def register_transformers_caches() -> None:
    """transformers' own pytree registration of ``DynamicCache`` for torch.export. It is
    idempotent (transformers skips a type already registered), and a no-op when transformers
    has not been imported: then no model can return its cache."""
    if "transformers" not in sys.modules:
        return
    try:
        from transformers.integrations.executorch import register_dynamic_cache_export_support
    except ImportError:  # a transformers without it: the cache is refused by name instead
        return
    register_dynamic_cache_export_support()


def _user_model(model: torch.nn.Module) -> torch.nn.Module:
    """The user's model, inside fxtrt's keyword wrapper if it has one."""
    return model.model if isinstance(model, _Bound) else model


def _forward_source(model: torch.nn.Module) -> str | None:
    """``file:line`` of the user's model's forward."""
    inner = _user_model(model)
    try:
        forward = inspect.unwrap(type(inner).forward)
        return f"{inspect.getsourcefile(forward)}:{inspect.getsourcelines(forward)[1]}"
    except (TypeError, OSError):
        return None


def unflattenable_output(exc: BaseException, model: torch.nn.Module) -> FxtrtError | None:
    """The error for an output type torch.export cannot flatten, naming the type and what to do;
    None when ``exc`` is another failure."""
    match = _UNKNOWN_OUTPUT.search(str(exc))
    if match is None:
        return None
    qualname = match[1]
    owner = type(model).__name__
    source = _forward_source(model)
    if qualname.startswith("transformers.") and qualname.endswith("Cache"):
        cli = (f", or on the command line 'transformers:{owner}:{{\"use_cache\": false}}'"
               if type(_user_model(model)).__module__.startswith("transformers.") else "")
        return ConfigError(
            f"{owner} returns its key/value cache as a {qualname} (use_cache is True), and torch.export "
            "cannot flatten that cache type into outputs (fxtrt compiles a DynamicCache output, not this one)",
            source=source,
            hint=f"compile without the cache: pass use_cache=False (kwargs={{\"use_cache\": False}}{cli})")
    return CaptureError(
        f"torch.export traced {owner}.forward, but cannot flatten what it returns: a {qualname} is not a "
        "pytree type (tensors, and tuples, lists and dicts of them, are)",
        source=source,
        hint=f"return tensors (or a tuple or dict of them) instead of the {qualname.rsplit('.', 1)[-1]}, e.g. in a "
             "wrapper module whose forward unpacks it, or register the class with "
             "torch.utils._pytree.register_pytree_node")
