"""Issue 17, class 3: ranges torch.export cannot prove in one graph, but one ONNX graph serves.

The limit is claimed only where the model itself fails or the artifact differs from it, and the
claim names the first failing size."""
from __future__ import annotations

import pytest
import torch

import fxtrt


class ClampedSlice(torch.nn.Module):
    """The slice end x.size(2) is clamped by the static 7 past T = 7: torch proves 4..7 only,
    and ONNX's Slice clamps too."""

    def forward(self, x):
        i = 1
        return x[: x.size(0), i : x.size(2), i:3] * 2


class Branches(torch.nn.Module):
    """Another path past T = 7: the graph torch traces (T <= 7) is wrong there."""

    def forward(self, x):
        if x.size(2) > 7:
            return x * 3
        return x * 2


def test_a_range_past_torch_exports_proof_is_verified_there_and_claimed(tmp_path):
    model = ClampedSlice().eval()
    c = fxtrt.compile(model, torch.randn(1, 7, 6), batch=(1, 4, 8), dynamic={0: {2: (4, 6, 10)}},
                      out_dir=tmp_path / "o")
    assert any("verified beyond torch.export's proof at x_dim2=8, 10" in n for n in c.report.notes)
    assert {r.sizes["x_dim2"] for r in c.report.verification} >= {4, 8, 10}
    (t,) = [d for d in c.claims.dims if d.name == "x_dim2"]
    assert (t.min, t.max) == (4, 10)
    for batch in (1, 3, 8):
        for size in (4, 7, 9, 10):
            x = torch.randn(batch, 7, size)
            torch.testing.assert_close(c(x), model(x))


def test_where_the_artifact_differs_past_the_proof_the_limit_names_the_first_failing_size():
    with pytest.raises(fxtrt.ConfigError, match=r"works only for 4\.\.7 .* first at x_dim2=8") as info:
        fxtrt.compile(Branches().eval(), torch.randn(1, 3, 6), batch=(1, 4, 8), dynamic={0: {2: (4, 6, 10)}})
    assert "within 4..7" in info.value.hint


class Pyramid(torch.nn.Module):
    """Two stride-2 convs and a x4 upsample added to the input: only multiples of 4 line up."""

    def __init__(self) -> None:
        super().__init__()
        self.down = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, stride=2, padding=1),
                                        torch.nn.Conv2d(3, 3, 3, stride=2, padding=1))

    def forward(self, x):
        return x + torch.nn.functional.interpolate(self.down(x), scale_factor=4.0)  # ADD


def test_a_model_that_serves_only_multiples_of_a_step_is_told_that_step():
    side = ("side", 16, 16, 40)
    with pytest.raises(fxtrt.ConfigError, match="served only on multiples of 4: the model runs at 16, 20, 24") as info:
        fxtrt.compile(Pyramid().eval(), torch.randn(1, 3, 16, 16), batch=(1, 2, 4), dynamic={0: {2: side, 3: side}})
    assert info.value.hint == "declare the step: (16, 16, 40, 4) for 'side'"
    model = Pyramid().eval()
    c = fxtrt.compile(model, torch.randn(1, 3, 16, 16), batch=(1, 2, 4), dynamic={0: {2: (*side, 4), 3: (*side, 4)}})
    x = torch.randn(2, 3, 36, 36)
    with torch.no_grad():
        torch.testing.assert_close(c(x), model(x), atol=1e-5, rtol=1e-4)
