"""drop_identity_resizes: a resize to its input's own size is the identity and leaves the graph;
one that changes the size, or is given a scale, stays."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fxtrt.passes.drop_identity_resizes import RESIZES, drop_identity_resizes
from tests.passes.conftest import assert_same


class PosEmbed(torch.nn.Module):
    """timm's resample_abs_pos_embed while exporting: a bicubic antialiased resize to the same grid."""

    def __init__(self, mode: str, antialias: bool, size: tuple[int, int] = (6, 6)) -> None:
        super().__init__()
        self.pos = torch.nn.Parameter(torch.randn(1, 4, 6, 6))
        self.mode, self.antialias, self.size = mode, antialias, size

    def forward(self, x):
        kw = {} if self.mode == "nearest" else {"align_corners": False}
        return x + F.interpolate(self.pos, size=self.size, mode=self.mode, antialias=self.antialias, **kw).mean()


def _resizes(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in RESIZES]


@pytest.mark.parametrize("mode,antialias", [("bicubic", True), ("bicubic", False), ("bilinear", True),
                                            ("bilinear", False), ("nearest", False)])
def test_a_resize_to_the_same_size_is_removed_and_the_values_stay(traced, mode, antialias):
    model = PosEmbed(mode, antialias).eval()
    gm, ctx = traced(model, torch.randn(2, 4, 6, 6), batch=(1, 4, 8))
    assert len(_resizes(gm)) == 1
    assert len(drop_identity_resizes(gm, ctx).changes) == 1 and not _resizes(gm)
    for b in (1, 3):
        assert_same(gm, model, torch.randn(b, 4, 6, 6))
    pos = model.pos.detach()
    kw = {} if mode == "nearest" else {"align_corners": False}
    assert torch.equal(F.interpolate(pos, size=(6, 6), mode=mode, antialias=antialias, **kw), pos), "exact identity"


def test_a_resize_that_changes_the_size_stays(traced):
    gm, ctx = traced(PosEmbed("bicubic", True, (8, 8)).eval(), torch.randn(2, 4, 6, 6), batch=(1, 4, 8))
    assert not drop_identity_resizes(gm, ctx).changes and len(_resizes(gm)) == 1
