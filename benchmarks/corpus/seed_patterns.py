"""Small modules that each carry one pattern the seed (torchpipe's ONNX guide) warns about.

They are the regression set for batch generalisation: a module whose batch
gets baked into the graph should fail loudly or be refused, never pass with
wrong numbers at batch 3.  ``FlattenRecommended`` is the seed's own fix and
is a control that every exporter should pass.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.inputs import features_with_mask, ids_ending_with, images, random_tensor
from benchmarks.model_spec import ModelSpec


class _ConvStem(nn.Module):
    """conv -> relu on 3x32x32, giving 8x16x16 (2048 features)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class ViewIntSize(nn.Module):
    """``x.view(int(x.size(0)), -1)``: ``int()`` turns the batch into a Python constant."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _ConvStem()
        self.fc = nn.Linear(8 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.fc(x.view(int(x.size(0)), -1))


class ViewSize(nn.Module):
    """``x.view(x.size(0), -1)``: dynamic, but costs Shape/Gather/Unsqueeze/Concat in ONNX."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _ConvStem()
        self.fc = nn.Linear(8 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.fc(x.view(x.size(0), -1))


class FlattenRecommended(nn.Module):
    """The seed's fix, ``x.view(-1, int(x.size(1) * x.size(2) * x.size(3)))``: a control that should pass."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _ConvStem()
        self.fc = nn.Linear(8 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.fc(x.view(-1, int(x.size(1) * x.size(2) * x.size(3))))


class ViewIntSize4d(nn.Module):
    """yolox's ``x.view(int(x.size(0)), -1, 1, 1)`` before a 1x1 conv head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _ConvStem()
        self.head = nn.Conv2d(8, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).mean((2, 3))
        return self.head(x.view(int(x.size(0)), -1, 1, 1)).flatten(1)


class ReshapeIntSize4d(nn.Module):
    """``x.reshape(int(x.size(0)), -1, 1, 1)`` feeding a squeeze-excite style gate.

    With the batch baked to 1, the pooled features of a batch of 3 become one
    row of 3x8 channels, which the gate's 1x1 conv should reject.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = _ConvStem()
        self.gate = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        g = torch.sigmoid(self.gate(x.mean((2, 3)).reshape(int(x.size(0)), -1, 1, 1)))
        return (x * g).sum((2, 3))


class SoftmaxIntSize(nn.Module):
    """``x.view(int(x.size(0)), -1).softmax(-1).view_as(x)``: a baked batch that the shape hides.

    Traced at batch 1, the softmax of a batch of 3 normalises over all three
    rows at once, and ``view_as`` restores the right shape: wrong values,
    right shape, no error.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = _ConvStem()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        attn = x.view(int(x.size(0)), -1).softmax(-1).view_as(x)
        return (attn * x).sum((2, 3))


class BoolMaskArithmetic(nn.Module):
    """``pad = (tgt_in == eos_id)`` used directly in arithmetic (the seed casts it to float first)."""

    def __init__(self, vocab: int = 100, dim: int = 32, eos_id: int = 2) -> None:
        super().__init__()
        self.eos_id = eos_id
        self.embed = nn.Embedding(vocab, dim)
        self.score = nn.Linear(dim, 1)

    def forward(self, tgt_in: torch.Tensor) -> torch.Tensor:
        pad = tgt_in == self.eos_id
        h = self.embed(tgt_in) * ~pad.unsqueeze(-1)
        scores = self.score(h).squeeze(-1) + pad * -1e4
        weights = scores.softmax(-1)
        return (weights.unsqueeze(-1) * h).sum(1) / (~pad).sum(1, keepdim=True)


class Float64Buffer(nn.Module):
    """Input normalisation with float64 mean/std buffers, cast back to float32."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1))
        self.stem = _ConvStem()
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x - self.mean) / self.std).float()
        return self.fc(self.stem(x).mean((2, 3)))


class LayerNormBlock(nn.Module):
    """A pre-LayerNorm transformer block with timm-style ``reshape(b, n, 3, heads, -1)`` attention."""

    def __init__(self, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 2), nn.GELU(), nn.Linear(dim * 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.norm2(x))


class SeqFirstEncoder(nn.Module):
    """``nn.TransformerEncoder`` with ``batch_first=False``: input and output are (T, B, D), batch on dim 1."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(dim, 4, dim * 2, dropout=0.0, batch_first=False)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, src: torch.Tensor) -> torch.Tensor:
        return self.encoder(src)


class _MaskedSelfAttention(nn.Module):
    """WeNet-style attention: a bool mask (B, 1, T) filled with -inf, then zeroed after softmax."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.size()
        q, k, v = self.qkv(self.norm(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5
        keep = mask.unsqueeze(1)
        attn = scores.masked_fill(~keep, float("-inf")).softmax(-1).masked_fill(~keep, 0.0)
        return x + self.out((attn @ v).transpose(1, 2).contiguous().view(b, t, d))


class SpeechEncoder(nn.Module):
    """The seed's speech-style encoder: features (1, T, 80) and mask (1, 1, T).

    WeNet's Conv2dSubsampling4 (``b, c, t, f = x.size(); x.view(b, t, c * f)``)
    and its mask slicing ``mask[:, :, :-2:2][:, :, :-2:2]``, then masked
    self-attention layers.  Returns the encoding and the subsampled mask.
    """

    def __init__(self, feat: int = 80, dim: int = 64, channels: int = 16) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, channels, 3, 2), nn.ReLU(), nn.Conv2d(channels, channels, 3, 2), nn.ReLU())
        freq = ((feat - 1) // 2 - 1) // 2
        self.out = nn.Linear(channels * freq, dim)
        self.layers = nn.ModuleList(_MaskedSelfAttention(dim, 4) for _ in range(2))

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv(feats.unsqueeze(1))
        b, c, t, f = x.size()
        x = self.out(x.transpose(1, 2).contiguous().view(b, t, c * f))
        mask = mask[:, :, :-2:2][:, :, :-2:2]
        for layer in self.layers:
            x = layer(x, mask)
        return x, mask


class LstmZeroState(nn.Module):
    """An LSTM whose initial state is built as ``torch.zeros(layers, x.size(0), hidden)``."""

    def __init__(self, feat: int = 80, hidden: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.layers = layers
        self.hidden = hidden
        self.lstm = nn.LSTM(feat, hidden, layers, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = torch.zeros(self.layers, x.size(0), self.hidden)
        c0 = torch.zeros(self.layers, x.size(0), self.hidden)
        out, _ = self.lstm(x, (h0, c0))
        return out


_IMAGE_32 = images(3, 32, 32)

SPECS: tuple[ModelSpec, ...] = (
    ModelSpec("seed/view_int_size", ViewIntSize, _IMAGE_32, quick=True, note="baked batch: int(x.size(0))"),
    ModelSpec("seed/view_size", ViewSize, _IMAGE_32, quick=True, note="dynamic but shape-op heavy"),
    ModelSpec("seed/flatten_recommended", FlattenRecommended, _IMAGE_32, note="the seed's fix; control"),
    ModelSpec("seed/view_int_size_4d", ViewIntSize4d, _IMAGE_32, note="baked batch: yolox head"),
    ModelSpec("seed/reshape_int_size_4d", ReshapeIntSize4d, _IMAGE_32, note="baked batch"),
    ModelSpec("seed/softmax_int_size", SoftmaxIntSize, _IMAGE_32, quick=True, note="baked batch hidden by view_as"),
    ModelSpec(
        "seed/bool_mask_arith", BoolMaskArithmetic, ids_ending_with(100, 16, eos_id=2),
        input_names=("tgt_in",), quick=True, note="bool mask in arithmetic",
    ),
    ModelSpec("seed/float64_buffer", Float64Buffer, _IMAGE_32, note="float64 buffers promote the input"),
    ModelSpec("seed/layernorm_block", LayerNormBlock, random_tensor(16, 64), note="LayerNorm needs opset >= 17"),
    ModelSpec(
        "seed/seq_first_encoder", SeqFirstEncoder, random_tensor(16, 64, batch_dim=1),
        input_names=("src",), batch_dims=(1,), quick=True, note="batch on dim 1",
    ),
    ModelSpec(
        "seed/speech_encoder", SpeechEncoder, features_with_mask(64, 80),
        input_names=("feats", "mask"), batch_dims=(0, 0), quick=True, note="input 1xTx80, bool mask 1x1xT",
    ),
    ModelSpec("seed/lstm_zero_state", LstmZeroState, random_tensor(32, 80), note="LSTM state from x.size(0)"),
)
