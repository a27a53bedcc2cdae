"""exact_nearest_resize: nearest resizing to a size picks PyTorch's source rows at every size pair,
where ONNX Resize rounds some differently (found by the fuzzer's hw_swap block)."""
from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F

import fxtrt
from fxtrt.passes.exact_nearest_resize import exact_nearest_resize
from tests.passes.conftest import assert_same

aten = torch.ops.aten


class SwapHW(torch.nn.Module):
    def forward(self, x):
        h, w = x.shape[-2:]
        return F.interpolate(x, size=(w, h)), F.interpolate(x[:, :, 0], size=h + 3)


class Doubled(torch.nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2.0)


def test_resizes_to_a_size_become_gathers_with_the_same_values(traced):
    model = SwapHW().eval()
    gm, ctx = traced(model, torch.randn(1, 2, 12, 12), batch=(1, 2, 4),
                     dynamic={0: {2: (8, 12, 30), 3: (8, 12, 30)}})
    result = exact_nearest_resize(gm, ctx)
    targets = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    assert not targets & {aten.upsample_nearest1d.vec, aten.upsample_nearest2d.vec}
    assert len(result.changes) == 2
    for shape in [(1, 2, 20, 12), (3, 2, 8, 29)]:
        assert_same(gm, model, torch.randn(*shape))


def test_a_resize_by_a_scale_factor_keeps_resize(traced):
    gm, ctx = traced(Doubled().eval(), torch.randn(1, 2, 6, 6), batch=(1, 2, 4))
    assert not exact_nearest_resize(gm, ctx).changes


def test_compile_matches_pytorch_at_every_size_pair(tmp_path):
    """20 -> 12 is one of the pairs where ONNX Resize and PyTorch pick different rows."""
    model = SwapHW().eval()
    c = fxtrt.compile(model, torch.randn(1, 4, 12, 12), batch=(1, 2, 4),
                      dynamic={0: {2: (8, 12, 24), 3: (8, 12, 24)}}, out_dir=tmp_path / "o")
    assert "Resize" not in {n.op_type for n in onnx.load(str(c.onnx_path)).graph.node}
    for h in range(8, 25):
        for w in (8, 12, 20, 24):
            x = torch.randn(1, 4, h, w)
            for got, want in zip(c(x), model(x)):
                assert torch.equal(got, want), (h, w)
