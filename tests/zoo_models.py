"""Models of the zoo sweep's tests (``--models tests.zoo_models:NAME``): real modules, no mocks."""
from __future__ import annotations

import time

import torch
from torch import nn


class Hang(nn.Module):
    """Runs in eager, and hangs for good once an exporter traces it (a fake tensor, or a jit trace),
    as an exporter stuck in a loop would: the zoo must time the cell out and go on."""

    zoo_input_shape = (8,)

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if type(x) is not torch.Tensor or torch.jit.is_tracing() or torch.compiler.is_compiling():
            while True:
                time.sleep(0.05)
        return self.linear(x)


class Tiny(nn.Module):
    """A model every exporter passes in a second or two."""

    zoo_input_shape = (8,)

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


class Tiny2(Tiny):
    """A second quick model, so a resumed run has a cell left after the hanging one."""
