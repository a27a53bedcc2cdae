"""verify=False still checks what torch.export does not prove (zoo: torchvision swin_t/swin_s with a
dynamic image size were silently wrong below the size torch traced them from: a branch on the size,
``shift_size = 0`` where the window covers the map, taken for the 0/1 rule)."""
from __future__ import annotations

import pytest
import torch

import fxtrt


class Branch(torch.nn.Module):
    """A Python branch on the size: torch.export proves the graph only for the branch it traced."""

    def forward(self, x):
        if x.shape[2] >= 8:
            return x * 2
        return x * 3  # LINE: small


def test_a_claim_below_the_traced_range_is_checked_even_without_verification():
    with pytest.raises(fxtrt.VerificationError):
        fxtrt.compile(Branch().eval(), torch.randn(1, 3, 12), dynamic={0: {2: ("n", 4, 12, 16)}}, verify=False)


def test_a_graph_torch_proves_over_the_range_is_not_checked():
    """No size past torch.export's proof: verify=False checks nothing, and says so."""
    class Plain(torch.nn.Module):
        def forward(self, x):
            return x * 2

    c = fxtrt.compile(Plain().eval(), torch.randn(2, 3, 12), dynamic={0: {2: ("n", 4, 12, 16)}}, verify=False)
    assert "verification was skipped (verify=False): nothing checks this model against the original" in c.report.notes
    assert not c.report.verification
