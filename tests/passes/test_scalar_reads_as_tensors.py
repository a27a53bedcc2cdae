"""scalar_reads_as_tensors: a float read from an input that only scales outputs is tensor
arithmetic (issue 17, class 6); a read that sets a size stays a refusal at its line."""
from __future__ import annotations

import pytest
import torch

import fxtrt
from fxtrt.passes.scalar_reads_as_tensors import scalar_reads_as_tensors
from tests.passes.conftest import assert_same

aten = torch.ops.aten


class Scale(torch.nn.Module):
    def forward(self, y, s):
        k = s.item()
        return y * k + (2.0 * k - 1) / 3, y - k


class SizeFromValue(torch.nn.Module):
    def forward(self, y, n):
        return y[:, : int(n.item())]  # READ


def _reads(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in (aten.item.default,
                                                                                     aten._local_scalar_dense.default)]


def test_a_read_that_only_scales_becomes_a_0d_tensor(traced):
    model = Scale().eval()
    gm, ctx = traced(model, (torch.randn(1, 4), torch.tensor(0.5)), batch=(1, 4, 8), batch_dims=(0, None))
    assert _reads(gm)
    result = scalar_reads_as_tensors(gm, ctx)
    assert not _reads(gm) and len(result.changes) == 1 and "only scales" in result.changes[0].note
    for batch, s in ((3, 2.5), (1, -1.0)):
        assert_same(gm, model, torch.randn(batch, 4), torch.tensor(s))


def test_compile_serves_a_scale_read_from_an_input_at_other_values_and_sizes():
    model = Scale().eval()
    c = fxtrt.compile(model, (torch.randn(1, 4), torch.tensor(0.5)), batch=(1, 4, 8), batch_dims=(0, None))
    for batch, s in ((3, 2.5), (8, -7.0)):
        y, t = torch.randn(batch, 4), torch.tensor(s)
        for got, want in zip(c(y, t), model(y, t)):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_a_read_that_sets_a_size_is_still_refused_at_its_line():
    with pytest.raises(fxtrt.GeneralizationError) as info:
        fxtrt.compile(SizeFromValue().eval(), (torch.randn(1, 8), torch.tensor(4)), batch=(1, 4, 8),
                      batch_dims=(0, None))
    assert info.value.source and info.value.source.startswith(__file__)
