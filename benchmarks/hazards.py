"""The hazard generator: random ``nn.Module`` source built from blocks that are real export hazards.

Each block is a few lines of ``forward`` (and ``__init__``) in one of two layouts, a sequence
``x: (B, S, 8)`` or an image ``x: (B, 4, H, W)``, that keep the layout's shape, so any list of
blocks composes. One line of each block is its hazard; the renderer records where it landed,
so an error's ``.source`` can be held to it. Tags mark what makes a model unservable:

* ``read``: a value read from the input (``.item()`` / ``.tolist()``): no static graph has it;
* ``loop`` with ``stat``: a per-sample Python loop (a bucket set, which pads) together with a
  statistic over the batch (which the padding rows change).

A :class:`ModelSpec` is drawn by :func:`model_specs`, a Hypothesis strategy (which dims are
dynamic, their ranges, the blocks), and rendered by :func:`render` to a standalone module with
``build()``, ``EXAMPLE_SHAPE`` and ``OPTIONS`` (the ``fxtrt.compile`` keyword arguments).

Left out on purpose, with the reason: ``nn.GRU`` and ``F.max_pool1d`` over a dynamic length,
which torch.export (2.14) specialises however the model is written; fxtrt then generalises the
length by trace diffing, which works until another block adds a literal that is not affine in
the length (``(4 - s % 4) % 4``), and then refuses with that block's line.

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
    """One way to write a hazard: ``{p}`` is the block's prefix (``b0_``); ``hazard`` indexes ``body``."""

    body: tuple[str, ...]
    hazard: int = 0
    init: tuple[str, ...] = ()
    tags: frozenset[str] = frozenset()


def _v(body: str, hazard: int = 0, init: str = "", tags: str = "") -> Variant:
    return Variant(tuple(body.strip("\n").splitlines()), hazard, tuple(init.strip("\n").splitlines()) if init else (),
                   frozenset(tags.split()))


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
    "split_chunk": {
        "seq": (
            _v("{p}a, {p}b = x.chunk(2, dim=-1)\nx = torch.cat([{p}b, {p}a * 2], -1)"),
            _v("{p}h = x.size(1) // 2\n{p}a, {p}b = x.split([{p}h, x.size(1) - {p}h], dim=1)\nx = torch.cat([{p}b, {p}a], 1)",
               hazard=1),
        ),
        "img": (
            _v("{p}a, {p}b = x.chunk(2, dim=1)\nx = torch.cat([{p}b, {p}a * 2], 1)"),
            _v("{p}h = x.size(2) // 2\n{p}a, {p}b = x.split([{p}h, x.size(2) - {p}h], dim=2)\nx = torch.cat([{p}b, {p}a], 2)",
               hazard=1),
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
}

BLOCK_NAMES = tuple(BLOCKS)
DIM_KINDS = ("batch", "batch+seq", "batch+hw", "seq", "hw")


@dataclass(frozen=True)
class ModelSpec:
    """One generated model: its layout, which dims are dynamic and their ranges, its blocks.

    ``batch``/``extra`` are (min, opt, max) or None (static); ``extra_kind`` is "seq" or "hw"
    (H = W, one dim); without a dynamic extra dim the layout's S or H = W is ``static_extra``.
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

    @property
    def dim_kind(self) -> str:
        parts = (["batch"] if self.batch else []) + ([self.extra_kind] if self.extra_kind else [])
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
            return "a per-sample loop with a statistic over the batch"
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
        elif self.extra_kind == "hw":
            dynamic = {0: {2: ("hw", *self.extra), 3: ("hw", *self.extra)}}
        out: dict[str, Any] = {"batch": self.batch}
        if dynamic:
            out["dynamic"] = dynamic
        return out

    def label(self) -> str:
        blocks = "+".join(f"{n}#{i}" for n, i in self.blocks) or "identity"
        return f"{self.layout}[{self.dim_kind}] {blocks}"

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
Run it: python {{this file}}  (compiles with fxtrt and checks it against eager at CHECK sizes).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

SPEC = {spec}
EXAMPLE_SHAPE = {shape}
OPTIONS = {options}
CHECK = {check}  # sizes to check compiled(...) against eager at


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


def inputs_at(sizes, seed=0):
    """Fresh random inputs at ``sizes`` ({{"batch": b, "seq"/"hw": n}})."""
    shape = list(EXAMPLE_SHAPE)
    if "batch" in sizes:
        shape[0] = sizes["batch"]
    for name in ("seq", "hw"):
        if name in sizes:
            for axis in ((1,) if name == "seq" else (2, 3)):
                shape[axis] = sizes[name]
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1000 + seed))


if __name__ == "__main__":
    import tempfile

    import fxtrt

    model = build()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            compiled = fxtrt.compile(model, example(), out_dir=tmp + "/out", **OPTIONS)
        except fxtrt.FxtrtError as exc:
            print(f"REFUSED: {{type(exc).__name__}}: {{exc}}")
            raise SystemExit(0)
        for i, sizes in enumerate(CHECK):
            x = inputs_at(sizes, i)
            with torch.no_grad():
                want = model(x)
            got = compiled(x)
            want = want if isinstance(want, tuple) else (want,)
            got = got if isinstance(got, tuple) else (got,)
            err = max(float((g - w).abs().max()) for g, w in zip(got, want))
            print(sizes, "max abs err", err)
'''


def render(spec: ModelSpec, check: list[dict[str, int]] | None = None) -> Rendered:
    """The model's module source and, per block, the line numbers of its hazard line."""
    spec_text = repr(spec.to_dict())
    why = f"expected refused: {spec.unservable}" if spec.unservable else "must be served"
    head = HEADER.format(label=spec.label(), why=why, spec=spec_text, shape=spec.example_shape(),
                         options=repr(spec.options()), check=repr(check or []))
    lines = head.splitlines()
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
    lines += ["", "    def forward(self, x):"]
    first = len(lines) + 1
    lines += ["        " + ln for ln in body]
    lines.append("        return (x, x.mean(1)) if SPEC[\"two_outputs\"] else x")
    text = "\n".join(lines) + FOOTER.format()
    return Rendered(text, {key: first + h for key, h, _, _ in marks},
                    {key: (first + a, first + b) for key, _, a, b in marks})


def _ranges(draw: Any, lows: tuple[int, ...], spans: tuple[int, ...]) -> tuple[int, int, int]:
    lo = draw(st.sampled_from(lows))
    hi = lo + draw(st.sampled_from(spans))
    opt = draw(st.integers(lo, hi))
    return (lo, opt, hi)


@st.composite
def model_specs(draw: Any, max_blocks: int = 4, blocks: tuple[str, ...] = BLOCK_NAMES) -> ModelSpec:
    """A random :class:`ModelSpec`: dim kind, ranges, one to ``max_blocks`` blocks, weights seed."""
    kind = draw(st.sampled_from(DIM_KINDS))
    layout = "img" if "hw" in kind else "seq" if "seq" in kind else draw(st.sampled_from(("seq", "img")))
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
    return ModelSpec(
        layout=layout, blocks=picked, batch=batch, extra_kind=extra_kind, extra=extra,
        static_extra=draw(st.sampled_from((6, 8))),
        example_batch=draw(st.sampled_from((1, 1, 2))) if batch else 2,
        two_outputs=draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
    )


@st.composite
def sub_specs(draw: Any, spec: ModelSpec) -> ModelSpec:
    """Smaller versions of ``spec`` (for shrinking a failure): a subset of its blocks, in order,
    with dropped blocks the simplest choice, so Hypothesis shrinks towards fewer blocks."""
    keep = [draw(st.booleans()) for _ in spec.blocks]
    blocks = tuple(b for b, k in zip(spec.blocks, keep) if k)
    return dataclasses.replace(spec, blocks=blocks, two_outputs=spec.two_outputs and draw(st.booleans()))
