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
