"""Snapshot what ``forward`` may change on the user's model, and put it back.

Some models cache in forward: ultralytics' Detect head stores ``anchors``, ``strides`` and
``shape`` the first time it sees an input size. A second trace would then see the first trace's
cache (and its fake tensors), so two traces of the same model differ in structure, and after
compile the user's model would hold tensors from a trace. Every trace starts from the snapshot,
and compile leaves the model as it found it: the attribute dicts, parameters and buffers (objects
and values) and the training flag of every submodule.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

_CONTAINERS = (list, dict, set)  # and their subclasses: OrderedDict hook tables, defaultdicts


@dataclass
class _Saved:
    module: torch.nn.Module
    attrs: dict[str, Any]
    contents: dict[str, Any]  # the contents of container attributes, restored into the same objects
    parameters: dict[str, Any]
    buffers: dict[str, Any]
    modules: dict[str, Any]
    buffer_values: dict[str, torch.Tensor]
    parameter_versions: dict[str, int]


class ModuleState:
    """``state = ModuleState(model)``; ``state.restore()`` before each trace and at the end
    (``with ModuleState(model):`` restores on leaving the block).

    Plain attributes are kept by identity and, for containers, by contents one level deep: a list
    the forward appends to, and the hook tables (``_forward_hooks``) a first forward registers
    into (transformers installs its output-capturing hooks then, and marks the model hooked). The
    containers are refilled in place, so a user's ``RemovableHandle`` still points at the table
    the module uses. Buffers are kept by value, since a forward may update them in place;
    parameters by identity, with a warning if a forward changed one in place (copying every
    weight would double memory). Attributes a forward adds are deleted.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self._saved: list[_Saved] = []
        for module in model.modules():
            attrs = {k: v for k, v in vars(module).items() if k not in ("_parameters", "_buffers", "_modules")}
            contents = {k: _contents(v) for k, v in attrs.items() if isinstance(v, _CONTAINERS)}
            self._saved.append(_Saved(
                module, attrs, contents, dict(module._parameters), dict(module._buffers), dict(module._modules),
                {k: b.detach().clone() for k, b in module._buffers.items() if isinstance(b, torch.Tensor)},
                {k: p._version for k, p in module._parameters.items() if p is not None},
            ))

    def __enter__(self) -> "ModuleState":
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def restore(self) -> None:
        for s in self._saved:
            m = s.module
            for k in [k for k in vars(m) if k not in ("_parameters", "_buffers", "_modules")]:
                if k not in s.attrs:
                    delattr(m, k)
            for k, v in s.attrs.items():
                if k in s.contents:
                    _refill(v, s.contents[k])
                object.__setattr__(m, k, v)
            m._parameters.clear()
            m._parameters.update(s.parameters)
            m._buffers.clear()
            m._buffers.update(s.buffers)
            m._modules.clear()
            m._modules.update(s.modules)
            with torch.no_grad():
                for k, value in s.buffer_values.items():
                    buf = m._buffers.get(k)
                    if buf is not None and not torch.equal(buf, value):
                        buf.copy_(value)
            for k, version in s.parameter_versions.items():
                p = m._parameters.get(k)
                if p is not None and p._version != version:
                    log.warning("parameter %s of %s was changed in place by forward; fxtrt cannot undo that",
                                k, type(m).__name__)
                    s.parameter_versions[k] = p._version


def _contents(value: Any) -> Any:
    return list(value.items()) if isinstance(value, dict) else list(value)


def _refill(container: Any, contents: list[Any]) -> None:
    """Put ``contents`` back into ``container`` itself, in their order."""
    container.clear()
    if isinstance(container, dict):
        container.update(contents)
    elif isinstance(container, list):
        container.extend(contents)
    else:
        container.update(contents)
