"""A model with one of each hazard `fxtrt explain` reports (line numbers are asserted)."""
import torch
import torch.nn as nn


class Hazards(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 5)
        self.register_buffer("scale", torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64))

    def forward(self, x, tgt, lengths):
        h = self.conv(x).view(int(x.size(0)), -1)
        mask = tgt == 2
        y = self.fc(h) * self.scale * mask
        n = max(lengths.tolist())
        return y[:, :n]


def hazards() -> Hazards:
    return Hazards().eval()
