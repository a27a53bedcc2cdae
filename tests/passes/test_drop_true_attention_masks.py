"""drop_true_attention_masks: a constant mask that keeps every position (transformers builds one
for hf ViT under torch.export) is dropped, so torch.onnx emits attention without the mask's
Where, Add and NaN guard (issue 19, item 4). Masks that mask something, or that depend on an
input, stay."""
from __future__ import annotations

import collections

import onnx
import torch
import torch.nn.functional as F

import fxtrt
from fxtrt.passes.drop_true_attention_masks import drop_true_attention_masks
from tests.passes.conftest import assert_same

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default


class Attend(torch.nn.Module):
    """Self-attention over (B, L, 16) with 2 heads and the mask ``kind`` builds, as transformers does."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.qkv = torch.nn.Linear(16, 48)

    def mask(self, x: torch.Tensor, keep: torch.Tensor | None):
        b, length, _ = x.shape
        if self.kind == "all_true":  # transformers' bidirectional mask with no padding
            return (torch.arange(length)[None, None, :, None] >= 0).expand(b, -1, length, length)
        if self.kind == "zeros":
            return torch.zeros(1, 1, length, length).expand(b, -1, -1, -1)
        if self.kind == "causal":
            return torch.ones(length, length, dtype=torch.bool).tril()
        return keep[:, None, None, :] > 0  # padding, from an input

    def forward(self, x, keep=None):
        b, length, _ = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask(x, keep))
        return out.transpose(1, 2).reshape(b, length, 16)


def _masks(gm):
    return [n.args[3] if len(n.args) > 3 else n.kwargs.get("attn_mask") for n in gm.graph.find_nodes(
        op="call_function", target=SDPA)]


def test_an_all_true_mask_is_dropped_and_the_values_stay(traced):
    torch.manual_seed(0)
    model = Attend("all_true").eval()
    gm, ctx = traced(model, torch.randn(1, 6, 16), batch=(1, 4, 8))
    assert _masks(gm)[0] is not None
    result = drop_true_attention_masks(gm, ctx)
    assert _masks(gm) == [None] and len(result.changes) == 1
    assert "keeps every position" in result.changes[0].note and result.changes[0].source
    assert not any(n.target == aten.arange.default for n in gm.graph.nodes)  # the mask's computation went too
    for batch in (1, 5):
        assert_same(gm, model, torch.randn(batch, 6, 16))


def test_an_all_zero_float_mask_is_dropped(traced):
    model = Attend("zeros").eval()
    gm, ctx = traced(model, torch.randn(1, 6, 16), batch=(1, 4, 8))
    assert drop_true_attention_masks(gm, ctx).changes and _masks(gm) == [None]
    assert_same(gm, model, torch.randn(3, 6, 16))


def test_masks_that_mask_something_or_read_an_input_stay(traced):
    for kind, example in (("causal", (torch.randn(1, 6, 16),)),
                          ("padding", (torch.randn(1, 6, 16), torch.ones(1, 6, dtype=torch.long)))):
        gm, ctx = traced(Attend(kind).eval(), example, batch=(1, 4, 8))
        assert not drop_true_attention_masks(gm, ctx).changes, kind
        assert _masks(gm)[0] is not None


def test_compile_emits_attention_without_the_mask_ops(tmp_path):
    torch.manual_seed(0)
    model = Attend("all_true").eval()
    c = fxtrt.compile(model, torch.randn(1, 6, 16), batch=(1, 4, 8), out_dir=tmp_path / "o")
    ops = collections.Counter(n.op_type for n in onnx.load(str(c.onnx_path)).graph.node)
    assert ops["IsNaN"] == 0 and ops["Where"] == 0 and ops["Expand"] == 0
    assert any(p["name"] == "drop_true_attention_masks" and p["changes"] for p in c.report.to_dict()["passes"])
    for batch in (2, 8):
        x = torch.randn(batch, 6, 16)
        torch.testing.assert_close(c(x), model(x), atol=1e-4, rtol=1e-3)
