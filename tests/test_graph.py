"""What an FX graph computes, node by node: what the divergence search and the debugger compare."""
from __future__ import annotations

import torch
import torch.fx

from fxtrt.graph import node_values


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x):
        h = self.fc(x)
        return torch.relu(h) * 2


def test_node_values_are_every_tensor_by_node_name() -> None:
    torch.manual_seed(0)
    model = Block().eval()
    gm = torch.fx.symbolic_trace(model)
    x = torch.randn(3, 4)
    values = node_values(gm, [x])
    assert set(values) >= {"x", "fc", "relu", "mul"}
    with torch.no_grad():
        torch.testing.assert_close(values["fc"], model.fc(x))
        torch.testing.assert_close(values["mul"], model(x))
    assert not values["mul"].requires_grad
