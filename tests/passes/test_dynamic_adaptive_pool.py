"""dynamic_adaptive_pool: adaptive average pooling over a dynamic size pools with PyTorch's windows
at every size (torch's decomposition bakes the traced size's window into AveragePool)."""
from __future__ import annotations

import pytest
import torch
import torchvision

import fxtrt
from fxtrt.passes.dynamic_adaptive_pool import POOLS, dynamic_adaptive_pool
from tests.passes.conftest import assert_same


class Pyramid(torch.nn.Module):
    """A PSP-style pool to 3x2 before a global mean: wrong sizes give wrong values, not an error."""

    def __init__(self, out=(3, 2)) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(out)

    def forward(self, x):
        p = self.pool(torch.relu(self.conv(x)))
        return p * torch.arange(p.shape[-1] * p.shape[-2], dtype=p.dtype).view(p.shape[-2:]) + x.mean()


def _pools(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in POOLS]


def test_pooling_over_a_dynamic_size_matches_pytorch_at_every_size(traced):
    model = Pyramid().eval()
    gm, ctx = traced(model, torch.randn(2, 3, 12, 12), batch=(1, 4, 8), dynamic={0: {2: ("h", 2, 12, 25), 3: ("w", 2, 12, 25)}})
    assert len(_pools(gm)) == 1
    assert len(dynamic_adaptive_pool(gm, ctx).changes) == 1 and not _pools(gm)
    for h, w in [(2, 2), (3, 7), (12, 12), (13, 25), (25, 4)]:  # smaller than the output, odd, divisible
        assert_same(gm, model, torch.randn(3, 3, h, w))


def test_static_pooling_and_pooling_to_one_are_left_alone(traced):
    gm, ctx = traced(Pyramid().eval(), torch.randn(2, 3, 12, 12), batch=(1, 4, 8))
    assert not dynamic_adaptive_pool(gm, ctx).changes
    gm, ctx = traced(Pyramid((1, 1)).eval(), torch.randn(2, 3, 12, 12), batch=(1, 4, 8),
                     dynamic={0: {2: ("h", 2, 12, 25)}})
    assert not dynamic_adaptive_pool(gm, ctx).changes


def test_alexnet_with_a_dynamic_image_size_compiles_and_serves_it():
    """torchvision AlexNet (zoo: LOUD for fxtrt with verify=False and for onnx_dynamo: the 6x6 pool
    was AveragePool(1x1) at every size), as held: never called, behind forward(*args)."""
    torch.manual_seed(0)
    net = torchvision.models.alexnet(weights=None, num_classes=10).eval()

    class First(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *args):
            return self.m(*args)

    size = {2: ("size", 96, 160, 224), 3: ("size", 96, 160, 224)}
    compiled = fxtrt.compile(First(net), torch.randn(1, 3, 160, 160), batch=(1, 2, 4), dynamic={0: size},
                             verify=False)
    for s in (96, 131, 224):  # 131: 3x3 features pooled to 6x6, not a size compile picked
        x = torch.randn(2, 3, s, s)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), net(x), atol=1e-4, rtol=1e-3)
    with pytest.raises(fxtrt.FxtrtError):
        compiled(torch.randn(2, 3, 240, 240))  # never claimed
