"""Build a corpus model the same way in every process: seeded, in eval mode, with no all-zero parameters."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.model_spec import Case, ModelSpec

log = logging.getLogger(__name__)

ZERO_FILL_STD = 0.02


@dataclass(frozen=True)
class PreparedModel:
    module: torch.nn.Module
    filled_parameters: tuple[str, ...]
    fingerprint: str
    n_params: int


def fill_zero_parameters(model: torch.nn.Module, seed: int, std: float = ZERO_FILL_STD) -> tuple[str, ...]:
    """Give all-zero float parameters random values.

    A zero-initialised head (torchvision's ViT) makes every output zero, and
    then every exporter "matches" eager whatever it did to the batch.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    filled = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.is_floating_point() and param.numel() > 0 and not bool(param.any()):
                param.normal_(0.0, std, generator=gen)
                filled.append(name)
    return tuple(filled)


def state_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every parameter and buffer: shows that two processes built the same weights."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def prepare_model(spec: ModelSpec, seed: int) -> PreparedModel:
    torch.manual_seed(seed)
    module = spec.build().eval()
    filled = fill_zero_parameters(module, seed)
    if filled:
        log.info("%s: filled %d all-zero parameters: %s", spec.name, len(filled), ", ".join(filled[:5]))
    return PreparedModel(
        module=module,
        filled_parameters=filled,
        fingerprint=state_fingerprint(module),
        n_params=sum(p.numel() for p in module.parameters()),
    )


def make_inputs(spec: ModelSpec, case: Case, seed: int) -> tuple[torch.Tensor, ...]:
    """The inputs for one case; the same (spec, case, seed) always gives the same tensors.

    A batch-only case is seeded by its batch size alone, as before dynamic dims existed.
    """
    gen = torch.Generator().manual_seed(seed * 7919 + case.batch + 1009 * sum(v for _, v in case.sizes))
    inputs = spec.make_inputs(case.batch, gen, dict(case.sizes))
    if len(inputs) != len(spec.input_names):
        raise ValueError(f"{spec.name}: make_inputs gave {len(inputs)} tensors for {len(spec.input_names)} inputs")
    return inputs


def flatten_outputs(value: Any) -> list[torch.Tensor]:
    """Tensors of a nested output in the order exporters emit them (tuple/list order, dict insertion order)."""
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in flatten_outputs(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in flatten_outputs(item)]
    raise TypeError(f"unsupported model output type {type(value).__name__}")
