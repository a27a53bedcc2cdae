"""What the benchmark needs to know about one corpus model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from benchmarks.inputs import InputFactory


@dataclass(frozen=True)
class ModelSpec:
    """One corpus entry.

    ``build`` returns the module ready to export (eval mode is set by the
    harness); its ``forward`` takes the tensors ``make_inputs`` returns, in
    order, and returns a tensor or a tuple of tensors.  ``build`` imports its
    library lazily so that listing the corpus stays cheap.
    """

    name: str
    build: Callable[[], torch.nn.Module]
    make_inputs: InputFactory
    input_names: tuple[str, ...] = ("x",)
    batch_dims: tuple[int | None, ...] = (0,)
    quick: bool = False
    note: str = ""

    def __post_init__(self) -> None:
        if "/" not in self.name:
            raise ValueError(f"ModelSpec name {self.name!r} must be 'family/model'")
        if len(self.input_names) != len(self.batch_dims):
            raise ValueError(
                f"{self.name}: {len(self.input_names)} input_names but "
                f"{len(self.batch_dims)} batch_dims"
            )

    @property
    def family(self) -> str:
        return self.name.split("/", 1)[0]
