"""The hazard generator: random ``nn.Module`` source built from blocks that are real export hazards.

Each block is a few lines of ``forward`` (and ``__init__``) in one of two layouts, a sequence
``x: (B, S, 8)`` or an image ``x: (B, 4, H, W)``, that keep the layout's shape, so any list of
blocks composes. One line of each block is its hazard; the renderer records where it landed,
so an error's ``.source`` can be held to it. Tags mark what makes a model unservable:

* ``read``: a value read from the input (``.item()`` / ``.tolist()``): no static graph has it;
* ``loop`` with ``stat``: a per-sample Python loop, or a split of the batch into a number of
  pieces that changes with it (a bucket set, which pads), together with a statistic over the
  batch (which the padding rows change).

And ``Variant.pieces`` marks a ``chunk``/``split`` along the layout's dynamic dim (S, or H or W):
where the number of pieces changes inside the drawn range, the model returns another number of
tensors at another size, which no graph does (a StructureError at the block's line); where it is
the same over the range, it is served (see :func:`piece_counts`).

A :class:`ModelSpec` is drawn by :func:`model_specs`, a Hypothesis strategy (which dims are
dynamic, their ranges, the blocks; whether H and W are one dim or two; ``forward(self, *args)``
or ``forward(self, x)``; whether the model runs once before compile), and rendered by
:func:`render` to a standalone module with ``build()``, ``EXAMPLE_SHAPE``, ``OPTIONS`` (the
``fxtrt.compile`` keyword arguments) and ``inputs_at(sizes)``. Blocks may bring module-level
code (``cache_in_forward``: submodules that cache or install hooks in forward).

Left out on purpose, with the reason: ``F.max_pool1d`` over a dynamic length, which torch.export
(2.14) specialises however the model is written. fxtrt generalises the length by trace diffing
(and ``max_pool_1d_as_2d``): alone it is served, but with another block's literal that is not
affine in the length (``(4 - s % 4) % 4``) it is refused (a GeneralizationError without
``.source``), and followed by ``F.interpolate`` back to the length, the pass
``exact_nearest_resize`` fails (a PassError). Recurrent layers are no longer left out: fxtrt
captures each as one op (``fxtrt.frontend.recurrent``), with the batch and the length symbolic.

Example::

    spec = ModelSpec(layout="seq", batch=(1, 4, 8), extra_kind="seq", extra=(4, 8, 16),
                     blocks=(("heads_fold", 0), ("per_sample_loop", 1)))
    source = render(spec)   # .text: the module; .hazard_lines: block -> line numbers
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

D = 8  # features of the sequence layout
C = 4  # channels of the image layout


@dataclass(frozen=True)
class Variant:
    """One way to write a hazard: ``{p}`` is the block's prefix (``b0_``); ``hazard`` indexes ``body``;
    ``module`` is code the block needs at module level (a submodule class, a hook function)."""

    body: tuple[str, ...]
    hazard: int = 0
    init: tuple[str, ...] = ()
    tags: frozenset[str] = frozenset()
    module: tuple[str, ...] = ()
    pieces: tuple[str, int] | None = None  # ("chunk", 3): x.chunk(3, dim) along the layout's dynamic dim


def _v(body: str, hazard: int = 0, init: str = "", tags: str = "", module: str = "",
       pieces: tuple[str, int] | None = None) -> Variant:
    return Variant(tuple(body.strip("\n").splitlines()), hazard, tuple(init.strip("\n").splitlines()) if init else (),
                   frozenset(tags.split()), tuple(module.strip("\n").splitlines()) if module else (), pieces)


def piece_counts(op: str, k: int, lo: int, hi: int) -> set[int]:
    """How many tensors ``x.chunk(k, d)`` (``op`` "chunk") or ``x.split(k, d)`` ("split") gives
    over the sizes ``lo..hi`` of dim ``d``, as torch makes them: chunk cuts pieces of ``ceil(n / k)``
    (so ``chunk(3)`` of 4 is 2 pieces), split pieces of ``k``."""
    def count(n: int) -> int:
        size = -(-n // k) if op == "chunk" else k
        return -(-n // size)

    return {count(n) for n in range(max(lo, 1), hi + 1)}


HOOKED = '''
def {p}hook(module, args, output):
    return output * 0.5 + 0.25


class {p}Hooked(nn.Module):
    """transformers-style: install a forward hook on the first call, and mark the module hooked."""

    def __init__(self, sub):
        super().__init__()
        self.sub = sub

    def forward(self, x):
        if not getattr(self, "_hooked", False):
            self.sub.register_forward_hook({p}hook)
            self._hooked = True
        return self.sub(x)
'''

COND_BRANCHES = '''
def {p}grow(t):
    return t * 2 + 1


def {p}turn(t):
    return t.flip(1) - 1
'''

# Per block, per layout, its variants. Order matters: Hypothesis shrinks towards the first.
BLOCKS: dict[str, dict[str, tuple[Variant, ...]]] = {
    "baked_size": {
        "seq": (
            _v("{p}n = int(x.size(0))\nx = torch.tanh(x.reshape({p}n, -1)).reshape(x.shape)"),
            _v("{p}n = x.data.size(0)\nx = torch.tanh(x.contiguous().view({p}n, -1)).view(x.shape)"),
            _v("{p}n = x.shape[0]\nx = torch.tanh(x.reshape({p}n, -1)).reshape({p}n, -1, 8)"),
            _v("{p}n = len(list(x))\nx = torch.tanh(x.reshape({p}n, -1)).reshape(x.shape)", tags="loop"),
            _v("{p}s = int(x.size(1))\nx = torch.tanh(x.reshape(-1, {p}s, 8)) + 0.5"),
        ),
        "img": (
            _v("{p}n = int(x.size(0))\nx = torch.tanh(x.reshape({p}n, -1)).reshape(x.shape)"),
            _v("{p}n = x.data.size(0)\nx = torch.tanh(x.contiguous().view({p}n, -1)).view(x.shape)"),
            _v("{p}n = x.shape[0]\nx = torch.tanh(x.reshape({p}n, 4, -1)).reshape(x.shape)"),
            _v("{p}n = len(list(x))\nx = torch.tanh(x.reshape({p}n, -1)).reshape(x.shape)", tags="loop"),
            _v("{p}h = int(x.size(2))\nx = torch.tanh(x.reshape(x.size(0), 4, {p}h, -1)) + 0.5"),
        ),
    },
    "view_sizes": {
        "seq": (
            _v("x = x.reshape(x.size(0), -1).relu().reshape(x.shape)"),
            _v("x = x.reshape(-1, 8).sigmoid().reshape(x.shape)"),
            _v("x = torch.cat([x.reshape(-1, 8), x.new_zeros(0, 8)]).reshape(x.shape) * 2"),
            _v("x = x.contiguous().view(x.size(0) * x.size(1), 8).softmax(-1).view(x.size(0), x.size(1), 8)"),
        ),
        "img": (
            _v("x = x.reshape(x.size(0), -1).relu().reshape(x.shape)"),
            _v("x = x.reshape(-1, x.size(-1)).sigmoid().reshape(x.shape)"),
            _v("x = torch.cat([x.reshape(-1, x.size(-1)), x.new_zeros(0, x.size(-1))]).reshape(x.shape) * 2"),
            _v("x = x.contiguous().view(x.size(0), 4, -1).softmax(-1).view(x.shape)"),
        ),
    },
    "heads_fold": {
        "seq": (
            _v("""
{p}b, {p}s, {p}d = x.shape
{p}q = x.reshape({p}b, {p}s, 2, {p}d // 2).transpose(1, 2).reshape({p}b * 2, {p}s, {p}d // 2)
{p}a = torch.softmax({p}q @ {p}q.transpose(1, 2) / 2.0, dim=-1) @ {p}q
x = {p}a.reshape({p}b, 2, {p}s, {p}d // 2).transpose(1, 2).reshape({p}b, {p}s, {p}d)
""", hazard=1),
            _v("""
{p}q = x.unflatten(-1, (2, 4)).permute(0, 2, 1, 3).flatten(0, 1)
{p}a = torch.softmax({p}q @ {p}q.transpose(-1, -2), dim=-1) @ {p}q
x = {p}a.unflatten(0, (-1, 2)).permute(0, 2, 1, 3).flatten(2)
""", hazard=0),
        ),
        "img": (
            _v("""
{p}b, {p}c, {p}h, {p}w = x.shape
{p}q = x.flatten(2).transpose(1, 2).reshape({p}b, {p}h * {p}w, 2, 2).transpose(1, 2).reshape({p}b * 2, {p}h * {p}w, 2)
{p}a = torch.softmax({p}q @ {p}q.transpose(1, 2), dim=-1) @ {p}q
x = {p}a.reshape({p}b, 2, {p}h * {p}w, 2).transpose(1, 2).reshape({p}b, {p}h * {p}w, 4).transpose(1, 2).reshape(x.shape)
""", hazard=1),
        ),
    },
    "seq_first": {
        "seq": (
            _v("{p}t = x.transpose(0, 1)\n{p}t, _ = self.{p}attn({p}t, {p}t, {p}t)\nx = {p}t.transpose(0, 1)",
               hazard=1, init="self.{p}attn = nn.MultiheadAttention(8, 2)"),
            _v("{p}t = x.transpose(0, 1)\nx = self.{p}norm({p}t * {p}t.size(1)).transpose(0, 1)", hazard=1,
               init="self.{p}norm = nn.LayerNorm(8)"),
        ),
        "img": (
            _v("{p}t = x.flatten(2).permute(2, 0, 1)\n{p}t, _ = self.{p}attn({p}t, {p}t, {p}t)\n"
               "x = {p}t.permute(1, 2, 0).reshape(x.shape)", hazard=1, init="self.{p}attn = nn.MultiheadAttention(4, 2)"),
        ),
    },
    "flatten_unflatten": {
        "seq": (
            _v("x = self.{p}fc(x.flatten(0, 1)).unflatten(0, (x.size(0), -1))", init="self.{p}fc = nn.Linear(8, 8)"),
            _v("x = x.flatten(1).softmax(-1).unflatten(1, (-1, 8))"),
        ),
        "img": (
            _v("x = x.flatten(2).softmax(-1).unflatten(2, (x.size(2), x.size(3)))"),
            _v("x = self.{p}fc(x.flatten(2).transpose(1, 2)).transpose(1, 2).unflatten(2, x.shape[2:])",
               init="self.{p}fc = nn.Linear(4, 4)"),
        ),
    },
    "expand_repeat": {
        "seq": (
            _v("x = x + self.{p}tok.expand(x.size(0), -1, -1)", init="self.{p}tok = nn.Parameter(torch.randn(1, 1, 8))"),
            _v("x = x * self.{p}tok.repeat(x.shape[0], 1, 1)", init="self.{p}tok = nn.Parameter(torch.randn(1, 1, 8))"),
            _v("{p}y = torch.cat([self.{p}tok.expand(x.size(0), -1, -1), x], 1)\nx = {p}y[:, 1:] + {p}y[:, :1]",
               init="self.{p}tok = nn.Parameter(torch.randn(1, 1, 8))"),
        ),
        "img": (
            _v("x = x + self.{p}tok.expand(x.size(0), -1, x.size(2), x.size(3))",
               init="self.{p}tok = nn.Parameter(torch.randn(1, 4, 1, 1))"),
            _v("x = x * self.{p}tok.repeat(x.shape[0], 1, x.shape[2], x.shape[3])",
               init="self.{p}tok = nn.Parameter(torch.randn(1, 4, 1, 1))"),
        ),
    },
    "arange_full": {
        "seq": (
            _v("x = x + torch.arange(x.size(1), dtype=x.dtype)[None, :, None] * 0.1"),
            _v("x = torch.cat([x, torch.zeros(x.size(0), x.size(1), 1)], -1)[..., 1:]"),
            _v("x = x * torch.full((x.size(0), 1, 1), 0.5)"),
            _v("x = x + torch.arange(x.size(0) * x.size(1)).reshape(x.size(0), -1, 1).float() * 0.01"),
        ),
        "img": (
            _v("x = x + torch.arange(x.size(2), dtype=x.dtype)[:, None] * 0.1"),
            _v("x = torch.cat([x, torch.zeros(x.size(0), 1, x.size(2), x.size(3))], 1)[:, 1:]"),
            _v("x = x * torch.full((x.size(0), 1, 1, 1), 0.5)"),
        ),
    },
    "size_slicing": {
        "seq": (
            _v("{p}h = x.size(1) // 2\nx = torch.cat([x[:, {p}h:], x[:, :{p}h]], 1)"),
            _v("x = x[:, : x.size(1) - 1].mean(1, keepdim=True) + x[:, -x.size(1):]"),
            _v("x = x[: x.size(0)] * 2 + x[:, 1:].sum(1, keepdim=True)"),
        ),
        "img": (
            _v("{p}h = x.size(2) // 2\nx = torch.cat([x[:, :, {p}h:], x[:, :, :{p}h]], 2)"),
            _v("x = x[:, :, : x.size(2) - 1].mean(2, keepdim=True) + x[:, :, -x.size(2):]"),
        ),
    },
    # along a static dim, by sizes from the dynamic one, and (#2 on) along the dynamic dim by a
    # count (pieces=: served where the count is the same over the range, else refused at the line)
    # or along the batch (a count that changes with it: a bucket set, which pads, so "loop")
    "split_chunk": {
        "seq": (
            _v("{p}a, {p}b = x.chunk(2, dim=-1)\nx = torch.cat([{p}b, {p}a * 2], -1)"),
            _v("{p}h = x.size(1) // 2\n{p}a, {p}b = x.split([{p}h, x.size(1) - {p}h], dim=1)\nx = torch.cat([{p}b, {p}a], 1)",
               hazard=1),
            _v("{p}a, {p}b = x.chunk(2, dim=1)\nx = torch.cat([{p}b * 2, {p}a], 1)", pieces=("chunk", 2)),
            _v("x = torch.cat([{p}c.flip(1) * (i + 1) for i, {p}c in enumerate(x.chunk(3, dim=1))], 1)",
               pieces=("chunk", 3)),
            _v("x = torch.cat([{p}c.flip(1) - {p}c.mean(1, keepdim=True) for {p}c in x.split(4, dim=1)], 1)",
               pieces=("split", 4)),
            _v("x = torch.cat([{p}c * (i + 1) for i, {p}c in enumerate(x.split(2, dim=0))])", tags="loop position"),
        ),
        "img": (
            _v("{p}a, {p}b = x.chunk(2, dim=1)\nx = torch.cat([{p}b, {p}a * 2], 1)"),
            _v("{p}h = x.size(2) // 2\n{p}a, {p}b = x.split([{p}h, x.size(2) - {p}h], dim=2)\nx = torch.cat([{p}b, {p}a], 2)",
               hazard=1),
            _v("{p}a, {p}b = x.chunk(2, dim=2)\nx = torch.cat([{p}b * 2, {p}a], 2)", pieces=("chunk", 2)),
            _v("x = torch.cat([{p}c.flip(2) * (i + 1) for i, {p}c in enumerate(x.chunk(4, dim=2))], 2)",
               pieces=("chunk", 4)),
            _v("x = torch.cat([{p}c.flip(3) - {p}c.mean(3, keepdim=True) for {p}c in x.split(5, dim=3)], 3)",
               pieces=("split", 5)),
            _v("x = torch.cat([{p}c * (i + 1) for i, {p}c in enumerate(x.split(2, dim=0))])", tags="loop position"),
        ),
    },
    "floordiv_window": {
        "seq": (
            _v("""
{p}s = x.size(1)
{p}pad = (4 - {p}s % 4) % 4
{p}y = F.pad(x, (0, 0, 0, {p}pad))
{p}y = {p}y.reshape({p}y.size(0), -1, 4, 8).mean(2, keepdim=True).expand(-1, -1, 4, -1).reshape({p}y.size(0), -1, 8)
x = x + {p}y[:, :{p}s]
""", hazard=1),
            _v("x = x + x[:, ::2].repeat_interleave(2, 1)[:, : x.size(1)]"),
        ),
        "img": (
            _v("""
{p}b, {p}c, {p}h, {p}w = x.shape
{p}ph, {p}pw = (-{p}h) % 4, (-{p}w) % 4
{p}y = F.pad(x, (0, {p}pw, 0, {p}ph))
{p}y = {p}y.reshape({p}b, {p}c, ({p}h + {p}ph) // 4, 4, ({p}w + {p}pw) // 4, 4).mean((3, 5), keepdim=True)
x = x + {p}y.expand(-1, -1, -1, 4, -1, 4).reshape({p}b, {p}c, {p}h + {p}ph, {p}w + {p}pw)[:, :, :{p}h, :{p}w]
""", hazard=1),
            _v("x = x + F.avg_pool2d(x, 2, ceil_mode=True).repeat_interleave(2, 2).repeat_interleave(2, 3)"
               "[:, :, : x.size(2), : x.size(3)]"),
        ),
    },
    "bool_mask": {
        "seq": (
            _v("{p}m = x > 0\nx = x * {p}m + {p}m.float() * 0.5"),
            _v("{p}m = x > 0\nx = x.masked_fill(~{p}m, -1.0) + {p}m"),
            _v("{p}m = x > 0\nx = x * {p}m.sum(-1, keepdim=True)"),
        ),
        "img": (
            _v("{p}m = x > 0\nx = x * {p}m + {p}m.float() * 0.5"),
            _v("{p}m = x > 0\nx = x.masked_fill(~{p}m, -1.0) + {p}m"),
        ),
    },
    "float64_buffer": {
        "seq": (
            _v("x = (x.double() * self.{p}scale).float()",
               init='self.register_buffer("{p}scale", torch.linspace(0.5, 1.5, 8, dtype=torch.float64))'),
            _v("x = (x * self.{p}scale).to(torch.float32) + 1",
               init='self.register_buffer("{p}scale", torch.linspace(0.5, 1.5, 8, dtype=torch.float64))'),
        ),
        "img": (
            _v("x = (x.double() * self.{p}scale).float()",
               init='self.register_buffer("{p}scale", torch.linspace(0.5, 1.5, 4, dtype=torch.float64)[:, None, None])'),
        ),
    },
    "item_const": {
        "seq": (
            _v("x = x * self.{p}k.item()", init='self.register_buffer("{p}k", torch.tensor(3.0))'),
            _v("{p}a, {p}b = self.{p}w.tolist()\nx = x * {p}a + {p}b", init='self.register_buffer("{p}w", torch.tensor([0.5, 2.0]))'),
        ),
        "img": (
            _v("x = x * self.{p}k.item()", init='self.register_buffer("{p}k", torch.tensor(3.0))'),
        ),
    },
    "conv_pool": {
        "seq": (
            _v("x = x + self.{p}conv(x.transpose(1, 2)).transpose(1, 2)", init="self.{p}conv = nn.Conv1d(8, 8, 3, padding=1)"),
            _v("{p}y = F.avg_pool1d(self.{p}conv(x.transpose(1, 2)), 2, ceil_mode=True)\n"
               "x = x + F.interpolate({p}y, size=x.size(1)).transpose(1, 2)",
               init="self.{p}conv = nn.Conv1d(8, 8, 3, padding=1)"),
        ),
        "img": (
            _v("{p}y = F.max_pool2d(self.{p}conv(x), 2, ceil_mode=True)\nx = x + F.interpolate({p}y, size=x.shape[-2:])",
               init="self.{p}conv = nn.Conv2d(4, 4, 3, padding=1)"),
            _v("{p}y = self.{p}conv(x)\nx = x + F.interpolate({p}y, size=(x.size(2), x.size(3)), mode='bilinear', "
               "align_corners=False)", init="self.{p}conv = nn.Conv2d(4, 4, 3, stride=2, padding=1)"),
            _v("x = x * torch.sigmoid(F.adaptive_avg_pool2d(self.{p}conv(x), 1))", init="self.{p}conv = nn.Conv2d(4, 4, 1)"),
        ),
    },
    "per_sample_loop": {
        "seq": (
            _v("x = torch.stack([self.{p}fc(s) for s in x])", init="self.{p}fc = nn.Linear(8, 8)", tags="loop"),
            _v("x = torch.stack([self.{p}fc(s) * (i % 3 + 1) for i, s in enumerate(x)])",
               init="self.{p}fc = nn.Linear(8, 8)", tags="loop position"),
            _v("x = torch.cat([self.{p}fc(x[i : i + 1]) for i in range(x.size(0))])",
               init="self.{p}fc = nn.Linear(8, 8)", tags="loop"),
        ),
        "img": (
            _v("x = torch.stack([self.{p}conv(s[None])[0] for s in x])", init="self.{p}conv = nn.Conv2d(4, 4, 3, padding=1)",
               tags="loop"),
            _v("x = torch.stack([self.{p}conv(s[None])[0] * (i % 3 + 1) for i, s in enumerate(x)])",
               init="self.{p}conv = nn.Conv2d(4, 4, 3, padding=1)", tags="loop position"),
        ),
    },
    "input_read": {
        "seq": (
            _v("x = x * (x.abs().max().item() + 1.0)", tags="read"),
            _v("{p}v = x[0, 0].tolist()\nx = x + {p}v[0]", tags="read"),
            _v("x = x[:, : int(x.abs().sum().item() > -1) + 1].mean(1, keepdim=True) + x", tags="read"),
        ),
        "img": (
            _v("x = x * (x.abs().max().item() + 1.0)", tags="read"),
            _v("{p}v = x[0, 0, 0].tolist()\nx = x + {p}v[0]", tags="read"),
        ),
    },
    "batch_stat": {
        "seq": (
            _v("x = x - x.mean(0, keepdim=True)", tags="stat"),
            _v("x = x - x[0:1]", tags="stat"),
            _v("x = F.batch_norm(x.transpose(1, 2), None, None, training=True).transpose(1, 2)", tags="stat"),
        ),
        "img": (
            _v("x = x - x.mean(0, keepdim=True)", tags="stat"),
            _v("x = F.batch_norm(x, None, None, training=True)", tags="stat"),
        ),
    },
    # H and W swapped: right only if H and W stay two sizes (declared independently, see ModelSpec.hw_independent)
    "hw_swap": {
        "img": (
            _v("x = x + F.interpolate(x, size=(x.size(3), x.size(2)), mode='bilinear', align_corners=False)"
               ".permute(0, 1, 3, 2)"),
            _v("{p}b, {p}c, {p}h, {p}w = x.shape\nx = x + x.reshape({p}b, {p}c, {p}w, {p}h).transpose(2, 3) * 0.5",
               hazard=1),
            _v("{p}h, {p}w = x.shape[-2:]\nx = x + F.interpolate(x, size=({p}w, {p}h)).transpose(2, 3)", hazard=1),
        ),
    },
    # submodules that change themselves in forward: compile must trace each time from the state it
    # was given and leave the model as it found it
    "cache_in_forward": {
        "seq": (
            _v("x = self.{p}head(x)", init="self.{p}head = {p}Anchors()", module='''
class {p}Anchors(nn.Module):
    """ultralytics Detect-style: anchors cached on the module, rebuilt when the input's shape changes."""

    def __init__(self):
        super().__init__()
        self.shape = None
        self.anchors = torch.empty(0)

    def forward(self, x):
        if self.shape != x.shape:
            self.anchors = torch.arange(x.size(1), dtype=x.dtype)[:, None] * 0.01
            self.shape = x.shape
        return x + self.anchors
'''),
            _v("x = self.{p}block(x)", init="self.{p}block = {p}Hooked(nn.Linear(8, 8))", module=HOOKED),
        ),
        "img": (
            _v("x = self.{p}head(x)", init="self.{p}head = {p}Anchors()", module='''
class {p}Anchors(nn.Module):
    """ultralytics Detect-style: an anchor grid cached on the module, rebuilt when a sample's shape changes."""

    def __init__(self):
        super().__init__()
        self.shape = None
        self.anchors = torch.empty(0)

    def forward(self, x):
        shape = x[0].shape
        if self.shape != shape:
            sy, sx = torch.meshgrid(torch.arange(x.size(2), dtype=x.dtype), torch.arange(x.size(3), dtype=x.dtype),
                                    indexing="ij")
            self.anchors = torch.stack((sx, sy)).repeat(2, 1, 1)[None] * 0.01
            self.shape = shape
        return x + self.anchors
'''),
            _v("x = self.{p}block(x)", init="self.{p}block = {p}Hooked(nn.Conv2d(4, 4, 1))", module=HOOKED),
        ),
    },
    # nn.GRU / LSTM / RNN over the sequence, batch-first or seq-first (transposed), 1 or 2 layers,
    # one or two directions, with no initial state or one built from the batch size (zeros, a
    # learned state expanded); projected back to the layout's features. In the image layout the
    # sequence is a row (the RNN's batch is B * H) or the columns' means over H.
    "recurrent": {
        "seq": (
            _v("{p}y, _ = self.{p}rnn(x)\nx = x + self.{p}proj({p}y)",
               init="self.{p}rnn = nn.GRU(8, 6, batch_first=True)\nself.{p}proj = nn.Linear(6, 8)"),
            _v("{p}y, _ = self.{p}rnn(x)\nx = x + self.{p}proj({p}y)",
               init="self.{p}rnn = nn.LSTM(8, 6, num_layers=2, batch_first=True, bidirectional=True)\n"
                    "self.{p}proj = nn.Linear(12, 8)"),
            _v("{p}y, {p}h = self.{p}rnn(x.transpose(0, 1))\n"
               "x = self.{p}proj({p}y.transpose(0, 1) + {p}h[-1][:, None])",
               init="self.{p}rnn = nn.RNN(8, 6)\nself.{p}proj = nn.Linear(6, 8)"),
            _v("{p}h0 = torch.zeros(2, x.size(0), 6)\n{p}y, {p}h = self.{p}rnn(x, {p}h0)\n"
               "x = x + self.{p}proj({p}y * {p}h[-1][:, None])",
               init="self.{p}rnn = nn.GRU(8, 6, num_layers=2, batch_first=True)\nself.{p}proj = nn.Linear(6, 8)"),
            _v("{p}h0 = torch.zeros(2, x.size(0), 6)\n"
               "{p}y, ({p}h, {p}c) = self.{p}rnn(x.transpose(0, 1), ({p}h0, {p}h0 + 0.5))\n"
               "x = self.{p}proj({p}y).transpose(0, 1)",
               init="self.{p}rnn = nn.LSTM(8, 6, bidirectional=True)\nself.{p}proj = nn.Linear(12, 8)"),
            _v("{p}h0 = self.{p}h0.expand(-1, x.size(0), -1).contiguous()\n"
               "{p}y, _ = self.{p}rnn(x.transpose(0, 1), {p}h0)\n"
               "x = x * self.{p}proj({p}y.transpose(0, 1)).sigmoid()",
               init="self.{p}rnn = nn.GRU(8, 4, num_layers=2, bidirectional=True)\nself.{p}proj = nn.Linear(8, 8)\n"
                    "self.{p}h0 = nn.Parameter(torch.randn(4, 1, 4) * 0.5)"),
        ),
        "img": (
            _v("{p}y, _ = self.{p}rnn(x.permute(0, 2, 3, 1).flatten(0, 1))\n"
               "x = x + self.{p}proj({p}y).unflatten(0, (x.size(0), -1)).permute(0, 3, 1, 2)",
               init="self.{p}rnn = nn.GRU(4, 4, batch_first=True, bidirectional=True)\nself.{p}proj = nn.Linear(8, 4)"),
            _v("{p}h0 = torch.zeros(1, x.size(0), 4)\n"
               "{p}y, _ = self.{p}rnn(x.mean(2).transpose(1, 2), ({p}h0, {p}h0))\n"
               "x = x + {p}y.transpose(1, 2)[:, :, None]", hazard=1,
               init="self.{p}rnn = nn.LSTM(4, 4, batch_first=True)"),
        ),
    },
    # torch.cond (ONNX If) on a value (a statistic over the batch: "stat") or on a size (the
    # sequence or H: constant over some drawn ranges, changing inside others; the batch: "stat",
    # a bucket set's padding changes the size it sees), with branches that keep the layout
    "cond": {
        "seq": (
            _v("x = torch.cond(x.tanh().sum() > 0, {p}grow, {p}turn, (x,))", tags="stat", module=COND_BRANCHES),
            _v("x = torch.cond(x.shape[1] > 6, {p}grow, {p}turn, (x,))", module=COND_BRANCHES),
            _v("x = torch.cond(x.amax(-1).mean() > 1, lambda t: self.{p}fc(t), lambda t: t.tanh() - self.{p}fc.bias,\n"
               "               (x,))",
               init="self.{p}fc = nn.Linear(8, 8)", tags="stat"),
            _v("x = torch.cond(x.size(0) > 2, {p}grow, {p}turn, (x,))", tags="stat", module=COND_BRANCHES),
        ),
        "img": (
            _v("x = torch.cond(x.tanh().sum() > 0, {p}grow, {p}turn, (x,))", tags="stat", module=COND_BRANCHES),
            _v("x = torch.cond(x.shape[2] > 10, {p}grow, {p}turn, (x,))", module=COND_BRANCHES),
            _v("x = torch.cond(x.amax(-1).mean() > 1, lambda t: self.{p}conv(t), lambda t: t.tanh(), (x,))",
               init="self.{p}conv = nn.Conv2d(4, 4, 3, padding=1)", tags="stat"),
        ),
    },
}

BLOCK_NAMES = tuple(BLOCKS)
DIM_KINDS = ("batch", "batch+seq", "batch+hw", "seq", "hw")


@dataclass(frozen=True)
class ModelSpec:
    """One generated model: its layout, which dims are dynamic and their ranges, its blocks.

    ``batch``/``extra`` are (min, opt, max) or None (static); ``extra_kind`` is "seq" or "hw"
    (H and W, both over ``extra``: one dim named "hw", or with ``hw_independent`` two dims left
    unnamed, which fxtrt must keep independent); without a dynamic extra dim the layout's S or
    H = W is ``static_extra``. ``star_args`` renders ``forward(self, *args)``; ``warm_up`` runs the
    model once on the example before compile (filling caches a forward keeps, as a user would).
    """

    layout: str
    blocks: tuple[tuple[str, int], ...]
    batch: tuple[int, int, int] | None = (1, 4, 8)
    extra_kind: str | None = None
    extra: tuple[int, int, int] | None = None
    static_extra: int = 6
    example_batch: int = 1
    two_outputs: bool = False
    seed: int = 0
    star_args: bool = False
    hw_independent: bool = False
    warm_up: bool = True

    @property
    def dim_kind(self) -> str:
        extra = "h+w" if self.extra_kind == "hw" and self.hw_independent else self.extra_kind
        parts = (["batch"] if self.batch else []) + ([extra] if extra else [])
        return "+".join(parts)

    def variants(self) -> list[Variant]:
        return [BLOCKS[name][self.layout][i] for name, i in self.blocks]

    @property
    def tags(self) -> frozenset[str]:
        return frozenset().union(*(v.tags for v in self.variants())) if self.blocks else frozenset()

    @property
    def unservable(self) -> str | None:
        """Why the generator expects a refusal, or None: every other model must be served."""
        if "read" in self.tags:
            return "a value read from the input"
        if self.batch is not None and {"loop", "stat"} <= self.tags:
            return "a per-sample loop (or a batch split) with a statistic over the batch"
        for v in self.variants():
            if v.pieces and self.extra:
                op, k = v.pieces
                counts = sorted(piece_counts(op, k, self.extra[0], self.extra[2]))
                if len(counts) > 1:
                    return f"{op}({k}) along a dynamic dim: {counts[0]} to {counts[-1]} pieces over its range"
        return None

    @property
    def example_extra(self) -> int:
        return self.extra[1] if self.extra else self.static_extra

    def example_shape(self) -> tuple[int, ...]:
        b = self.example_batch if self.batch else 2
        e = self.example_extra
        return (b, e, D) if self.layout == "seq" else (b, C, e, e)

    def options(self) -> dict[str, Any]:
        """The ``fxtrt.compile`` keyword arguments."""
        dynamic: dict[int, dict[int, tuple]] = {}
        if self.extra_kind == "seq":
            dynamic = {0: {1: ("seq", *self.extra)}}
        elif self.extra_kind == "hw" and self.hw_independent:
            dynamic = {0: {2: self.extra, 3: self.extra}}
        elif self.extra_kind == "hw":
            dynamic = {0: {2: ("hw", *self.extra), 3: ("hw", *self.extra)}}
        out: dict[str, Any] = {"batch": self.batch}
        if dynamic:
            out["dynamic"] = dynamic
        return out

    def outside(self, shape: tuple[int, ...]) -> str | None:
        """Why an input of ``shape`` is outside what :meth:`options` declare, or None when inside."""
        ex = self.example_shape()
        if len(shape) != len(ex):
            return f"rank {len(shape)}, declared {len(ex)}"
        axes = [("batch", 0, self.batch)]
        axes += [("seq", 1, self.extra)] if self.layout == "seq" else [("H", 2, self.extra), ("W", 3, self.extra)]
        for name, axis, rng in axes:
            if rng is None and shape[axis] != ex[axis]:
                return f"{name} is {shape[axis]}, declared static {ex[axis]}"
            if rng is not None and not rng[0] <= shape[axis] <= rng[2]:
                return f"{name} is {shape[axis]}, declared {rng[0]}..{rng[2]}"
        fixed = (2,) if self.layout == "seq" else (1,)
        for axis in fixed:
            if shape[axis] != ex[axis]:
                return f"axis {axis} is {shape[axis]}, declared static {ex[axis]}"
        if self.layout == "img" and shape[2] != shape[3] and not (self.extra and self.hw_independent):
            return f"H {shape[2]} != W {shape[3]}, declared one size"
        return None

    def label(self) -> str:
        blocks = "+".join(f"{n}#{i}" for n, i in self.blocks) or "identity"
        how = (" *args" if self.star_args else "") + ("" if self.warm_up else " cold")
        return f"{self.layout}[{self.dim_kind}]{how} {blocks}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in data.items() if k in fields}
        kw["blocks"] = tuple(tuple(b) for b in kw["blocks"])
        for k in ("batch", "extra"):
            kw[k] = tuple(kw[k]) if kw.get(k) is not None else None
        return cls(**kw)


@dataclass(frozen=True)
class Rendered:
    text: str
    hazard_lines: dict[str, int] = field(default_factory=dict)  # "b0:baked_size" -> its hazard's line (1-based)
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)  # "b0:baked_size" -> its first, last line


HEADER = '''"""fxtrt fuzz model: {label}

Generated by benchmarks.hazards from the spec below; {why}.
Run it: python {{this file}}  (compiles with fxtrt, compares the model with an untouched twin,
and calls the compiled model at CHECK sizes: it must match eager inside its claims, and raise
fxtrt.ConfigError outside them).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

SPEC = {spec}
EXAMPLE_SHAPE = {shape}
OPTIONS = {options}
CHECK = {check}  # sizes to call compiled(...) at
'''

MODEL_HEAD = '''

class Model(nn.Module):
    def __init__(self):
        super().__init__()
'''

FOOTER = '''

def build():
    torch.manual_seed(SPEC["seed"])
    return Model().eval()


def example():
    return torch.randn(*EXAMPLE_SHAPE, generator=torch.Generator().manual_seed(SPEC["seed"] + 1))


AXES = {"batch": (0,), "seq": (1,), "hw": (2, 3), "h": (2,), "w": (3,)}


def inputs_at(sizes, seed=0):
    """Fresh random inputs at ``sizes`` ({"batch": b, "seq": s} or "hw": n for H and W, "h"/"w"
    for one of them); other axes as in EXAMPLE_SHAPE."""
    shape = list(EXAMPLE_SHAPE)
    for key, n in sizes.items():
        for axis in AXES[key]:
            shape[axis] = n
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1000 + seed))


def max_diff(a, b):
    a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
    return max(float((torch.as_tensor(u) - v).abs().max()) for u, v in zip(a, b))


if __name__ == "__main__":
    import tempfile

    import fxtrt

    model, twin = build(), build()  # twin: the same model, never given to compile
    with torch.no_grad():
        twin(example())
        if SPEC.get("warm_up", True):
            model(example())
    with tempfile.TemporaryDirectory() as tmp:
        try:
            compiled = fxtrt.compile(model, example(), out_dir=tmp + "/out", **OPTIONS)
        except fxtrt.FxtrtError as exc:
            print(f"REFUSED: {type(exc).__name__}: {exc}")
            compiled = None
        for i, sizes in enumerate([{}] + CHECK[:1]):
            with torch.no_grad():
                x = inputs_at(sizes, i)
                print(sizes, "the model after compile vs its twin: max abs diff", max_diff(model(x), twin(x)))
        if compiled is None:
            raise SystemExit(0)
        print("claims:", compiled.claims)
        for i, sizes in enumerate(CHECK):
            x = inputs_at(sizes, i)
            try:
                got = compiled(x)
            except fxtrt.ConfigError as exc:
                print(sizes, "ConfigError:", exc.message)
                continue
            with torch.no_grad():
                print(sizes, "served, max abs err vs eager", max_diff(got, twin(x)))
'''


def render(spec: ModelSpec, check: list[dict[str, int]] | None = None) -> Rendered:
    """The model's module source and, per block, the line numbers of its hazard line."""
    spec_text = repr(spec.to_dict())
    why = f"expected refused: {spec.unservable}" if spec.unservable else "must be served"
    head = HEADER.format(label=spec.label(), why=why, spec=spec_text, shape=spec.example_shape(),
                         options=repr(spec.options()), check=repr(check or []))
    lines = head.splitlines()
    for k, variant in enumerate(spec.variants()):
        if variant.module:
            lines += ["", ""] + [ln.format(p=f"b{k}_") for ln in variant.module]
    lines += MODEL_HEAD.splitlines()
    init: list[str] = []
    body: list[str] = []
    marks: list[tuple[str, int, int, int]] = []  # (block key, hazard, first, last) as indexes into body
    for k, (name, variant) in enumerate(zip((n for n, _ in spec.blocks), spec.variants())):
        p = f"b{k}_"
        init += [ln.format(p=p) for ln in variant.init]
        body.append(f"# block {k}: {name}")
        marks.append((f"b{k}:{name}", len(body) + variant.hazard, len(body), len(body) + len(variant.body) - 1))
        body += [ln.format(p=p) for ln in variant.body]
    lines += ["        " + ln for ln in init] or ["        pass"]
    signature = ["    def forward(self, *args):", "        x = args[0]"] if spec.star_args else ["    def forward(self, x):"]
    lines += [""] + signature
    first = len(lines) + 1
    lines += ["        " + ln for ln in body]
    lines.append("        return (x, x.mean(1)) if SPEC[\"two_outputs\"] else x")
    text = "\n".join(lines) + "\n" + FOOTER
    return Rendered(text, {key: first + h for key, h, _, _ in marks},
                    {key: (first + a, first + b) for key, _, a, b in marks})


def _ranges(draw: Any, lows: tuple[int, ...], spans: tuple[int, ...]) -> tuple[int, int, int]:
    lo = draw(st.sampled_from(lows))
    hi = lo + draw(st.sampled_from(spans))
    opt = draw(st.integers(lo, hi))
    return (lo, opt, hi)


def _layout_of(kind: str) -> str | None:
    return "img" if "hw" in kind else "seq" if "seq" in kind else None


@st.composite
def model_specs(draw: Any, max_blocks: int = 4, blocks: tuple[str, ...] = BLOCK_NAMES) -> ModelSpec:
    """A random :class:`ModelSpec`: dim kind, ranges, one to ``max_blocks`` blocks, weights seed,
    and how it is written and declared (``*args``, H and W independent, warmed up or not). H and
    W are always independent under ``hw_swap``, whose result is right only if they are. Only
    layouts that one of ``blocks`` has are drawn."""
    layouts = tuple(lt for lt in ("seq", "img") if any(lt in BLOCKS[n] for n in blocks))  # a block for each
    kind = draw(st.sampled_from([k for k in DIM_KINDS if _layout_of(k) in layouts + (None,)]))
    layout = _layout_of(kind) or draw(st.sampled_from(layouts))
    names = [n for n in blocks if layout in BLOCKS[n]]
    chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=max_blocks))
    picked = tuple((n, draw(st.integers(0, len(BLOCKS[n][layout]) - 1))) for n in chosen)
    batch = _ranges(draw, (1, 2), (3, 5, 7)) if kind.startswith("batch") else None
    extra_kind = "seq" if "seq" in kind else "hw" if "hw" in kind else None
    extra = None
    if extra_kind == "seq":
        extra = _ranges(draw, (4, 5, 8), (4, 9, 24))
    elif extra_kind == "hw":
        extra = _ranges(draw, (8, 9, 12), (8, 13, 24))
    independent = extra_kind == "hw" and ("hw_swap" in chosen or draw(st.booleans()))
    return ModelSpec(
        layout=layout, blocks=picked, batch=batch, extra_kind=extra_kind, extra=extra,
        static_extra=draw(st.sampled_from((6, 8))),
        example_batch=draw(st.sampled_from((1, 1, 2))) if batch else 2,
        two_outputs=draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
        star_args=draw(st.sampled_from((False, False, False, True))), hw_independent=independent,
        warm_up=draw(st.booleans()),
    )


@st.composite
def sub_specs(draw: Any, spec: ModelSpec) -> ModelSpec:
    """Smaller versions of ``spec`` (for shrinking a failure): a subset of its blocks, in order,
    with dropped blocks the simplest choice, so Hypothesis shrinks towards fewer blocks."""
    keep = [draw(st.booleans()) for _ in spec.blocks]
    blocks = tuple(b for b, k in zip(spec.blocks, keep) if k)
    return dataclasses.replace(spec, blocks=blocks, two_outputs=spec.two_outputs and draw(st.booleans()),
                               star_args=spec.star_args and draw(st.booleans()))
