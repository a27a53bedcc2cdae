"""The torchpipe guide's failure patterns, as small modules (used by several test files)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class IntSizeView(nn.Module):
    """``x.view(int(x.size(0)), -1)``: bakes the batch into the graph."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.fc = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x):
        x = F.relu(self.conv(x))
        x = x.view(int(x.size(0)), -1)  # LINE: int-view
        return self.fc(x)


class SizeView(nn.Module):
    """``x.view(x.size(0), -1)``: exports as Shape→Gather→Unsqueeze→Concat→Reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.fc = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x):
        x = F.relu(self.conv(x))
        x = x.view(x.size(0), -1)
        return self.fc(x)


class ReshapeUnsqueeze(nn.Module):
    """yolox's ``x.reshape(int(x.size(0)), -1, 1, 1)`` before a 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.conv = nn.Conv2d(3 * 4, 6, 1)

    def forward(self, x):
        x = self.pool(x)
        x = x.reshape(int(x.size(0)), -1, 1, 1)
        return self.conv(x)


class BoolMask(nn.Module):
    """A decoder-style mask ``(tgt_in == eos_id)`` used in arithmetic."""

    eos_id = 2

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 16)
        self.out = nn.Linear(16, 10)

    def forward(self, tgt_in):
        mask = tgt_in == self.eos_id  # LINE: bool-mask
        h = self.emb(tgt_in) * mask.unsqueeze(-1)
        return self.out(h)


class TransformerBlock(nn.Module):
    """Pre-norm attention + MLP with LayerNorm (wants opset >= 17)."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) / (c // self.heads) ** 0.5
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(y)
        return x + self.mlp(self.ln2(x))  # LINE: mlp-out


class Float64Buffer(nn.Module):
    """A float64 buffer promotes the whole tail to float64, which TensorRT lacks."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 4)
        self.register_buffer("scale", torch.tensor([0.5, 1.5, 2.0, 3.0], dtype=torch.float64))  # LINE: f64

    def forward(self, x):
        return self.fc(x) * self.scale


class SeqFirstAttention(nn.Module):
    """Seq-first (T, B, E) attention: the batch is dim 1, and ``B * heads`` is baked inside."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads)
        self.fc = nn.Linear(dim, 8)

    def forward(self, x):
        y, _ = self.attn(x, x, x, need_weights=False)
        t, b, e = y.shape
        return self.fc(y.reshape(int(t) * int(b), e)).view(t, int(b), 8)


class SeqFirstGRU(nn.Module):
    """The issue's seq-first GRU: x is (T, B, F), h0 is (L, B, H)."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(16, 32, num_layers=2)
        self.head = nn.Linear(32, 4)

    def forward(self, x, h0):
        y, h = self.gru(x, h0)
        t, b, hidden = y.shape
        return self.head(y.reshape(int(t) * int(b), hidden)).view(t, int(b), 4), h


class SpeechEncoder(nn.Module):
    """Speech-style encoder: x (B, T, 80), mask (B, 1, T); dynamic in T as well as B."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.inp = nn.Linear(80, dim)
        self.ln = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, 16)

    def forward(self, x, mask):
        b, t, _ = x.shape
        h = self.ln(self.inp(x))
        q, k, v = self.qkv(h).view(int(b), int(t), 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / 8.0
        scores = scores.masked_fill(mask.unsqueeze(1) == 0, -1e4)
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(int(b), int(t), -1)
        return self.out(y) * mask.transpose(1, 2)


class PerSampleLoop(nn.Module):
    """A Python loop over the samples: the graph's structure depends on the batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        outs = [self.fc(x[i]) for i in range(x.size(0))]  # LINE: loop
        return torch.stack(outs)


class ValueDependent(nn.Module):
    """Sizes read from tensor values with ``.tolist()``."""

    def forward(self, x, lengths):
        n = max(lengths.tolist())  # LINE: tolist
        return x[:, :n] * 2


def line_of(cls: type, tag: str) -> int:
    """The line number of the source line marked ``# LINE: tag`` in this file."""
    import inspect

    lines, start = inspect.getsourcelines(cls)
    for i, text in enumerate(lines):
        if f"# LINE: {tag}" in text:
            return start + i
    raise LookupError(tag)


class Fp16Overflow(nn.Module):
    """Activations past fp16's 65504 going into LayerNorm and Softmax: a plain fp16 cast gives inf/NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.ln = nn.LayerNorm(16)
        self.head = nn.Linear(16, 8)

    def forward(self, x):
        h = self.fc(x) * 300.0  # LINE: scale
        h = h * h  # LINE: square
        return torch.softmax(self.head(self.ln(h)), dim=-1)  # LINE: norm-softmax


class PerStepLoop(nn.Module):
    """A Python loop over time steps: the structure depends on the sequence length, not the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        steps = [torch.tanh(self.fc(x[:, t])) for t in range(x.size(1))]  # LINE: step-loop
        return torch.stack(steps, 1).sum(1)



class KeywordEncoder(nn.Module):
    """A tokenizer-style model: keyword inputs, a mask, and a dict out (as transformers models are)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 16)
        self.proj = nn.Linear(16, 16)

    def forward(self, input_ids, attention_mask=None, return_dict=True):
        h = self.proj(self.embed(input_ids)) * attention_mask.unsqueeze(-1).float()
        pooled = h.sum(1) / attention_mask.sum(1, keepdim=True).clamp(min=1).float()
        return {"last_hidden_state": h, "pooler_output": pooled} if return_dict else (h, pooled)
