"""Issue 17 on packaged models: the exporters' test patterns as timm and transformers ship them.

Each model is built straight from its constructor, never called before compile, held behind a
``forward(self, *args)`` wrapper that picks one output, and checked at sizes compile did not pick;
afterwards the model's own outputs are unchanged. The other classes' packaged cases live beside
their small modules: timm efficientvit_b0 (class 2, ``tests/backend/test_higher_order.py``),
hiera/nest/twins (``tests/passes/test_fold_attention_dims.py``), visformer_tiny (``tests/backend/
test_verify.py``).
"""
from __future__ import annotations

import copy
import logging

import pytest
import torch

import fxtrt


class PickOne(torch.nn.Module):
    """How users hold packaged models: ``*args`` in, one output out."""

    def __init__(self, model: torch.nn.Module, method: str | None = None, index: int | None = None) -> None:
        super().__init__()
        self.model, self.method, self.index = model, method, index

    def forward(self, *args):
        out = getattr(self.model, self.method)(*args) if self.method else self.model(*args)
        return out if self.index is None else out[self.index]


def _close(compiled, wrapper, *inputs) -> None:
    with torch.no_grad():
        want = wrapper(*inputs)
        scale = float(want.abs().max())
        torch.testing.assert_close(compiled(*inputs), want, atol=1e-4 + 1e-3 * scale, rtol=1e-3)


@pytest.mark.slow
def test_class_1_timm_sequencer2d_lstms_along_h_and_w_with_batch_and_side_dynamic(tmp_path):
    """timm's Sequencer2d runs bidirectional LSTMs along H and along W: the LSTM's sequence is
    the image side. A small configuration of the packaged class (sequencer2d_s itself takes ~40 s);
    ``side`` = H = W is declared once, and every LSTM becomes one ONNX LSTM node."""
    timm = pytest.importorskip("timm")
    model = timm.create_model("sequencer2d_s", pretrained=False, layers=(1, 1, 1, 1), embed_dims=(16, 32, 32, 32),
                              hidden_sizes=(8, 16, 16, 16)).eval()
    pristine = copy.deepcopy(model)
    wrapper = PickOne(model, "forward_features")
    side = ("side", 56, 84, 112)
    compiled = fxtrt.compile(wrapper, torch.randn(1, 3, 84, 84), batch=(1, 2, 8),
                             dynamic={0: {2: side, 3: side}}, out_dir=tmp_path / "out")
    import onnx
    ops = [n.op_type for n in onnx.load(str(compiled.onnx_path)).graph.node]
    assert ops.count("LSTM") == 8 and "Loop" not in ops, ops  # 4 blocks x (along H, along W)
    for b, s in [(1, 56), (3, 70), (8, 112)]:
        _close(compiled, wrapper, torch.randn(b, 3, s, s))
    x = torch.randn(2, 3, 98, 98)
    with torch.no_grad():
        torch.testing.assert_close(model(x), pristine(x), atol=0, rtol=0)
    with pytest.raises(fxtrt.ConfigError, match="side"):
        compiled(torch.randn(1, 3, 126, 126))


@pytest.mark.slow
def test_class_4_transformers_feed_forward_chunking_along_a_dynamic_sequence(tmp_path, caplog):
    """BERT with ``chunk_size_feed_forward`` chunks its feed-forward along the sequence: with the
    batch dynamic that is one graph; with the sequence dynamic the number of chunks follows it,
    which no graph serves. That refusal is a StructureError at transformers' line, and no static-
    batch bucket set is tried for it (static batches would not help)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64, chunk_size_feed_forward=8)
    model = transformers.BertModel(config).eval()
    wrapper = PickOne(model, index=0)
    ids = torch.randint(0, 99, (1, 16))
    compiled = fxtrt.compile(wrapper, ids, batch=(1, 2, 8), out_dir=tmp_path / "batch")
    for b in (1, 3, 8):
        _close(compiled, wrapper, torch.randint(0, 99, (b, 16)))

    caplog.set_level(logging.WARNING, logger="fxtrt")
    with pytest.raises(fxtrt.StructureError, match="size of 'seq'") as info:
        fxtrt.compile(wrapper, ids, batch=(1, 2, 8), dynamic={0: {1: ("seq", 8, 16, 64)}}, out_dir=tmp_path / "seq")
    assert info.value.source and info.value.source.split("/")[-1].startswith("modeling_bert.py:"), info.value.source
    assert info.value.dims == ("seq",) and "static-batch" not in info.value.hint
    assert not any("static-batch models" in r.getMessage() for r in caplog.records), "no bucket fallback for seq"
    assert not (tmp_path / "seq").exists()
