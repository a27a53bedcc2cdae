"""The ``peer`` family: small modules with the patterns the exporters' own test suites exercise.

Issue 17.  torch.export's and torch.onnx's test suites carry recurrent layers
with dynamic batch and sequence, control-flow higher-order ops (``cond``,
``scan``, ``map``, ``while_loop``), slices clamped past what torch.export can
prove, ``chunk``/``split`` along a dynamic dim, ``repeat_interleave`` then a
flatten, ``.item()`` of a 0-d input, 5-D attention and nearest resizes with
independent H and W.  Each module here is one such pattern, in a tiny size
with random seeded weights, exported for batch 1..8 (and each dim's range)
and judged at batch 1, 3 and 8 times each dim's sizes, as the ``dyn`` family.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.inputs import NO_SIZES, InputFactory, Sizes, random_tensor, resolve
from benchmarks.model_spec import DynamicDim, ModelSpec

BATCH_RANGE = (1, 4, 8)
JUDGE_BATCHES = (1, 3, 8)

SEQ = DynamicDim("seq", 4, 8, 16)
SEQ_SIZES = (4, 11, 16)
FEAT = 8
HIDDEN = 16


# --- 1. recurrent layers, batch and sequence dynamic ------------------------------------------


class Recurrent(nn.Module):
    """``nn.LSTM``/``GRU``/``RNN``; ``h0`` is none, zeros built from the input's batch, or a second input."""

    def __init__(self, kind: str, h0: str = "none", **kwargs: object) -> None:
        super().__init__()
        cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind]
        self.rnn = cls(FEAT, HIDDEN, **kwargs)
        self.kind = kind
        self.h0 = h0
        self.batch_first = bool(kwargs.get("batch_first", False))
        self.states = self.rnn.num_layers * (2 if self.rnn.bidirectional else 1)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.h0 == "zeros":
            # The exporters' tests' idiom: h0 = torch.zeros(L*D, x.size(batch), H).
            h0 = torch.zeros(self.states, x.size(0 if self.batch_first else 1), HIDDEN)
        if h0 is None:
            out, state = self.rnn(x)
        elif self.kind == "lstm":
            out, state = self.rnn(x, (h0, torch.zeros_like(h0)))
        else:
            out, state = self.rnn(x, h0)
        h_n = state[0] if self.kind == "lstm" else state
        return out, h_n


def _rnn_spec(name: str, kind: str, note: str, *, h0: str = "none", **kwargs: object) -> ModelSpec:
    batch_first = bool(kwargs.get("batch_first", False))
    b, t = (0, 1) if batch_first else (1, 0)
    x_factory = random_tensor(SEQ.name, FEAT, batch_dim=b)
    names: tuple[str, ...] = ("x",)
    batch_dims: tuple[int | None, ...] = (b,)
    dynamic: dict[int, dict[int, DynamicDim]] = {0: {t: SEQ}}
    factory = x_factory
    if h0 == "input":
        layers = int(kwargs.get("num_layers", 1)) * (2 if kwargs.get("bidirectional") else 1)  # type: ignore[call-overload]
        h_factory = random_tensor(layers, HIDDEN, batch_dim=1)

        def factory(batch: int, gen: torch.Generator, sizes: Sizes = NO_SIZES) -> tuple[torch.Tensor, ...]:
            return x_factory(batch, gen, sizes) + h_factory(batch, gen, sizes)

        names, batch_dims = ("x", "h0"), (b, 1)
    return ModelSpec(
        name=f"peer/{name}", build=lambda: Recurrent(kind, h0, **kwargs), make_inputs=factory,
        input_names=names, batch_dims=batch_dims, dynamic=dynamic, judge_sizes={SEQ.name: SEQ_SIZES},
        batch_range=BATCH_RANGE, judge_batches=JUDGE_BATCHES, note=note,
    )


class GruSpeechEncoder(nn.Module):
    """A GRU speech encoder: ``feats (B, T, 80)``, bool ``mask (B, 1, T)``; masked mean of the GRU states."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(80, 32)
        self.gru = nn.GRU(32, HIDDEN, num_layers=2, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * HIDDEN, 10)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(torch.relu(self.proj(feats)))
        m = mask.transpose(1, 2).to(h.dtype)  # (B, T, 1)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.out(pooled)


def speech_features(feat: int = 80) -> InputFactory:
    """Features ``(B, T, feat)`` zeroed past each row's length, and a bool mask ``(B, 1, T)``; T is ``seq``."""

    def make(batch: int, gen: torch.Generator, sizes: Sizes = NO_SIZES) -> tuple[torch.Tensor, ...]:
        time = resolve(SEQ.name, sizes)
        lengths = torch.randint(max(1, time // 2), time + 1, (batch,), generator=gen)
        lengths[0] = time - max(1, time // 4)
        mask = torch.arange(time).unsqueeze(0) < lengths.unsqueeze(1)
        feats = torch.randn(batch, time, feat, generator=gen) * mask.unsqueeze(-1)
        return feats, mask.unsqueeze(1)

    return make


# --- 2. control flow: cond, scan, map, while_loop, no_grad ------------------------------------


class CondValue(nn.Module):
    """``torch.cond`` on a data-dependent predicate (the sum's sign, which differs between rows' batches)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(FEAT, FEAT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return torch.cond(y.sum() > 0, lambda t: t.sin() * 2.0, lambda t: t.cos() - 1.0, (y,))


class CondShape(nn.Module):
    """``torch.cond`` on a shape predicate: the sequence is longer than 8 or not."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(FEAT, FEAT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return torch.cond(x.size(1) > 8, lambda t: t.relu() + 1.0, lambda t: t.tanh() * 3.0, (y,))


class ScanRnn(nn.Module):
    """``torch.ops.higher_order.scan`` as an Elman RNN over the time dim (dim 1) of ``(B, T, C)``."""

    def __init__(self) -> None:
        super().__init__()
        self.w_in = nn.Parameter(torch.randn(FEAT, HIDDEN) * 0.3)
        self.w_h = nn.Parameter(torch.randn(HIDDEN, HIDDEN) * 0.3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from torch._higher_order_ops.scan import scan

        w_in, w_h = self.w_in, self.w_h

        def step(h: torch.Tensor, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h_new = torch.tanh(x_t @ w_in + h @ w_h)
            return h_new, h_new.clone()

        h0 = x.new_zeros(x.size(0), HIDDEN)
        last, ys = scan(step, h0, x, dim=1)
        return last, ys


class MapRows(nn.Module):
    """``torch.ops.higher_order.map`` over the batch: each row through its own small MLP call."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(FEAT, FEAT) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch._higher_order_ops.map import map as hop_map

        return hop_map(lambda row, w: torch.tanh(row @ w) + row.mean(), x, self.w)


class WhileLoopShrink(nn.Module):
    """``torch.ops.higher_order.while_loop``: halve while the max is above 1 (at most 6 times); data-dependent trip count.

    ``full_max`` picks the predicate's reduction: ``t.abs().max()`` or ``t.abs().amax()`` (no dims).
    """

    def __init__(self, full_max: bool = False) -> None:
        super().__init__()
        self.full_max = full_max

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from torch._higher_order_ops.while_loop import while_loop

        def cond_fn(i: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            peak = t.abs().max() if self.full_max else t.abs().amax()
            return (i < 6) & (peak > 1.0)

        def body_fn(i: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return i + 1, t * 0.5

        i0 = torch.zeros((), dtype=torch.int64)
        n, y = while_loop(cond_fn, body_fn, (i0, x * 3.0))
        return y, n.to(y.dtype).expand(x.size(0))


class NoGradInForward(nn.Module):
    """``with torch.no_grad():`` around part of ``forward`` (a frozen stem, as in distillation code)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(FEAT, HIDDEN)
        self.head = nn.Linear(HIDDEN, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = F.gelu(self.stem(x))
        return self.head(h).softmax(-1)


# --- 3-8. slices, chunk/split, repeat_interleave, item, 5-D attention, resize, squeeze --------


class ClampedSlice(nn.Module):
    """``x[:, 1 : x.size(2), 1:3]`` on ``(B, 7, T)``: dim 1 ends at min(T, 7), past torch.export's proof."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 1 : x.size(2), 1:3] * 2.0


class ChunkDynamic(nn.Module):
    """``x.chunk(3, dim=1)`` along the sequence: always 3 pieces for T >= 5, of uneven, T-dependent sizes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = x.chunk(3, dim=1)
        return torch.cat([a * 2.0, b.sin(), c - 1.0], dim=1) + a.mean(1, keepdim=True)


class SplitDynamic(nn.Module):
    """``torch.split(x, 4, dim=-1)`` along a last dim of 9..12: always 3 pieces, the last 1..4 wide."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b, c = torch.split(x, 4, dim=-1)
        return a * b, c.sum(-1)


class RepeatInterleaveFlatten(nn.Module):
    """``repeat_interleave(2, dim=0)`` along the batch, then ``flatten(1)`` into a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4 * FEAT, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.repeat_interleave(2, dim=0)
        y = y + torch.arange(y.size(0), dtype=y.dtype).view(-1, 1, 1) * 0.1
        return self.fc(y.flatten(1))


class ItemScale(nn.Module):
    """``y * s.item()``: ``s`` a float 0-d input, different in every call; the batch is only on ``y``."""

    def forward(self, y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return y * s.item() + 1.0


def with_scalar(base: InputFactory) -> InputFactory:
    """``base``'s inputs and a 0-d float drawn in [0.5, 2.5) (no batch)."""

    def make(batch: int, gen: torch.Generator, sizes: Sizes = NO_SIZES) -> tuple[torch.Tensor, ...]:
        return (*base(batch, gen, sizes), torch.rand((), generator=gen) * 2.0 + 0.5)

    return make


class WindowedSdpa(nn.Module):
    """5-D ``F.scaled_dot_product_attention`` on ``(B, windows, heads, L, d)``, Swin-style windows."""

    def __init__(self, heads: int = 2, dim: int = 16) -> None:
        super().__init__()
        self.heads, self.dim = heads, dim
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, w, n, c = x.shape
        qkv = self.qkv(x).reshape(b, w, n, 3, self.heads, c // self.heads).permute(3, 0, 1, 4, 2, 5)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, W, heads, L, d)
        return self.proj(out.transpose(2, 3).reshape(b, w, n, c))


class NearestSwapped(nn.Module):
    """``F.interpolate(x, size=(w, h), mode="nearest")``: H and W independent, so the ratios differ per axis."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return F.interpolate(x, size=(w, h), mode="nearest")


class NearestToSkip(nn.Module):
    """FPN's ``F.interpolate(top, size=skip.shape[-2:], mode="nearest") + skip`` with odd, independent H and W."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top = self.down(x)
        return F.interpolate(top, size=x.shape[-2:], mode="nearest") + x


class SqueezeNoop(nn.Module):
    """``x.squeeze(-1)`` on a last dim that is dynamic but never 1: a no-op the export must not turn into a reshape to 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.squeeze(-1).softmax(-1)


class PackedLstm(nn.Module):
    """``pack_padded_sequence`` -> LSTM -> ``pad_packed_sequence`` with lengths from a mask (real ASR/NLP code)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(80, HIDDEN, batch_first=True)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.squeeze(1).sum(-1)
        packed = nn.utils.rnn.pack_padded_sequence(feats, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        padded, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=feats.size(1))
        return padded


def _spec(
    name: str, build: Callable[[], nn.Module], make_inputs: InputFactory, note: str, *,
    dynamic: dict[int, dict[int, DynamicDim]] | None = None, judge: dict[str, tuple[int, ...]] | None = None,
    input_names: tuple[str, ...] = ("x",), batch_dims: tuple[int | None, ...] = (0,),
) -> ModelSpec:
    return ModelSpec(
        name=f"peer/{name}", build=build, make_inputs=make_inputs, input_names=input_names, batch_dims=batch_dims,
        dynamic=dynamic or {}, judge_sizes=judge or {}, batch_range=BATCH_RANGE, judge_batches=JUDGE_BATCHES,
        note=note,
    )


SLICE_T = DynamicDim("t", 4, 8, 10)
CHUNK_T = DynamicDim("seq", 5, 8, 16)
SPLIT_W = DynamicDim("width", 9, 10, 12)
WINDOWS = DynamicDim("windows", 2, 4, 6)
HEIGHT = DynamicDim("h", 5, 8, 12)
WIDTH = DynamicDim("w", 6, 10, 16)
SQUEEZE_N = DynamicDim("n", 2, 5, 10)
_SEQ_X = {0: {1: SEQ}}

SPECS: tuple[ModelSpec, ...] = (
    _rnn_spec("lstm_2layer_bi", "lstm", "LSTM, 2 layers, bidirectional, batch_first, no h0",
              num_layers=2, bidirectional=True, batch_first=True),
    _rnn_spec("lstm_seq_first_zeros_h0", "lstm", "LSTM (T, B, C), h0 = c0 = torch.zeros(L*D, x.size(1), H)",
              h0="zeros", num_layers=1),
    _rnn_spec("gru_batch_first", "gru", "GRU, 1 layer, batch_first, no h0", batch_first=True),
    _rnn_spec("gru_bi_h0_input", "gru", "GRU (T, B, C), 2 layers, bidirectional, h0 (4, B, H) an input",
              h0="input", num_layers=2, bidirectional=True),
    _rnn_spec("gru_zeros_h0_batch_first", "gru", "GRU batch_first, 2 layers, h0 = torch.zeros(L*D, x.size(0), H)",
              h0="zeros", num_layers=2, batch_first=True),
    _rnn_spec("rnn_tanh_2layer", "rnn", "RNN tanh, 2 layers, batch_first", num_layers=2, batch_first=True),
    _rnn_spec("rnn_relu_bi", "rnn", "RNN relu, bidirectional, (T, B, C), h0 an input",
              h0="input", nonlinearity="relu", bidirectional=True),
    _spec("gru_speech_encoder", GruSpeechEncoder, speech_features(80),
          "GRU encoder, feats B x T x 80, bool mask B x 1 x T; masked mean",
          dynamic={0: {1: SEQ}, 1: {2: SEQ}}, judge={SEQ.name: SEQ_SIZES},
          input_names=("feats", "mask"), batch_dims=(0, 0)),
    _spec("cond_value", CondValue, random_tensor(SEQ.name, FEAT), "torch.cond on y.sum() > 0",
          dynamic=_SEQ_X, judge={SEQ.name: SEQ_SIZES}),
    _spec("cond_shape", CondShape, random_tensor(SEQ.name, FEAT), "torch.cond on x.size(1) > 8",
          dynamic=_SEQ_X, judge={SEQ.name: SEQ_SIZES}),
    _spec("scan_rnn", ScanRnn, random_tensor(SEQ.name, FEAT), "higher_order.scan over dim 1 (an Elman RNN)",
          dynamic=_SEQ_X, judge={SEQ.name: SEQ_SIZES}),
    _spec("map_rows", MapRows, random_tensor(SEQ.name, FEAT), "higher_order.map over the batch",
          dynamic=_SEQ_X, judge={SEQ.name: SEQ_SIZES}),
    _spec("while_loop_shrink", WhileLoopShrink, random_tensor(SEQ.name, FEAT),
          "higher_order.while_loop, data-dependent trip count, t.abs().amax() in cond_fn",
          dynamic=_SEQ_X, judge={SEQ.name: SEQ_SIZES}),
    _spec("while_loop_max", lambda: WhileLoopShrink(full_max=True), random_tensor(SEQ.name, FEAT),
          "higher_order.while_loop, data-dependent trip count, t.abs().max() in cond_fn",
          dynamic=_SEQ_X, judge={SEQ.name: SEQ_SIZES}),
    _spec("no_grad_in_forward", NoGradInForward, random_tensor(SEQ.name, FEAT), "with torch.no_grad(): in forward",
          dynamic=_SEQ_X, judge={SEQ.name: SEQ_SIZES}),
    _spec("clamped_slice", ClampedSlice, random_tensor(7, SLICE_T.name), "x[:, 1:x.size(2), 1:3] on (B, 7, T), T 4..10",
          dynamic={0: {2: SLICE_T}}, judge={SLICE_T.name: (4, 6, 10)}),
    _spec("chunk_dynamic", ChunkDynamic, random_tensor(CHUNK_T.name, FEAT), "x.chunk(3, dim=1), T 5..16 (3 pieces)",
          dynamic={0: {1: CHUNK_T}}, judge={CHUNK_T.name: (5, 7, 16)}),
    _spec("split_dynamic", SplitDynamic, random_tensor(FEAT, SPLIT_W.name), "torch.split(x, 4, dim=-1), W 9..12 (3 pieces)",
          dynamic={0: {2: SPLIT_W}}, judge={SPLIT_W.name: (9, 11, 12)}),
    _spec("repeat_interleave_flatten", RepeatInterleaveFlatten, random_tensor(4, FEAT),
          "x.repeat_interleave(2, dim=0).flatten(1), batch only"),
    _spec("item_scale", ItemScale, with_scalar(random_tensor(FEAT, FEAT)), "y * s.item(), s a 0-d float input",
          input_names=("y", "s"), batch_dims=(0, None)),
    _spec("sdpa_5d_windows", WindowedSdpa, random_tensor(WINDOWS.name, 8, 16),
          "5-D SDPA (B, windows, heads, L, d), windows 2..6", dynamic={0: {1: WINDOWS}}, judge={WINDOWS.name: (2, 5, 6)}),
    _spec("nearest_swapped_hw", NearestSwapped, random_tensor(4, HEIGHT.name, WIDTH.name),
          "F.interpolate(x, size=(w, h), mode='nearest'), H 5..12 and W 6..16 independent",
          dynamic={0: {2: HEIGHT, 3: WIDTH}}, judge={HEIGHT.name: (5, 12), WIDTH.name: (7, 16)}),
    _spec("nearest_to_skip", NearestToSkip, random_tensor(4, HEIGHT.name, WIDTH.name),
          "FPN: interpolate(conv_s2(x), size=x.shape[-2:], nearest) + x, odd independent H, W",
          dynamic={0: {2: HEIGHT, 3: WIDTH}}, judge={HEIGHT.name: (5, 12), WIDTH.name: (7, 16)}),
    _spec("squeeze_noop", SqueezeNoop, random_tensor(FEAT, SQUEEZE_N.name), "x.squeeze(-1) on a dynamic dim 2..10",
          dynamic={0: {2: SQUEEZE_N}}, judge={SQUEEZE_N.name: (2, 7, 10)}),
    _spec("packed_lstm", PackedLstm, speech_features(80),
          "pack_padded_sequence -> LSTM -> pad_packed_sequence, lengths from a bool mask",
          dynamic={0: {1: SEQ}, 1: {2: SEQ}}, judge={SEQ.name: SEQ_SIZES},
          input_names=("feats", "mask"), batch_dims=(0, 0)),
)
