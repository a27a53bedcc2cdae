"""The one match rule, and the one way an input becomes a feed.

In the spirit of Polygraphy's ``CompareFunc.simple``: one function holds the rule every check
uses (verification, fp16 repair, the divergence search, the per-pass debug check, the batch-size
probe), with per-call options rather than a copy per caller. The rule is elementwise

    |a - b| <= atol + rtol * |ref|

with NaN against NaN and equal infinities matching, and any other non-finite difference failing.
(Polygraphy's own "simple" check passes an element when *either* tolerance holds, which is
looser.) Options: ``per_tensor`` takes the tensor's largest finite ``|ref|`` in place of each
element's, so the rounding of a large tensor's near-zero entries does not count as divergence;
``exact_integers`` asks integer and bool tensors to be equal. :func:`roundoff_verdict` is the
second rule, for outputs that fail the first.

The ONNX model takes float32 where the model took float64 (TensorRT has no float64), so every
feed, and every FX graph run that stands for the ONNX model, casts through :func:`onnx_input`.

Example::

    c = compare_arrays(ref, out, atol=1e-4, rtol=1e-3)
    c.passed, c.max_abs, c.max_rel
    feeds = feeds_at(example, settings.dims, ["x"], [{"batch": 1}, {"batch": 8}])
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch

from fxtrt.settings import DynamicDim
from fxtrt.sizes import Noise, inputs_at

Feeds = list[tuple[dict[str, int], dict[str, np.ndarray]]]
ROUNDOFF_FACTOR = 2.0  # "about as close": at most this many times eager float32's own distance


@dataclass(frozen=True)
class Tolerance:
    """``|a - b| <= atol + rtol * |ref|``, and the note its rows carry ("fp16 (atol=0.01, rtol=0.01)")."""

    atol: float
    rtol: float
    note: str = ""
    roundoff: bool = True  # a failing output gets the float64 rule (roundoff_verdict); not for fp16


@dataclass(frozen=True)
class Comparison:
    """One tensor against its reference: the worst errors, how many values overflowed where the
    reference is finite, the largest finite ``|ref|``, and whether the rule held everywhere."""

    max_abs: float
    max_rel: float
    nonfinite: int
    peak: float
    passed: bool
    note: str = ""


def compare_arrays(ref: np.ndarray, out: np.ndarray, atol: float, rtol: float, *,
                   per_tensor: bool = False, exact_integers: bool = False) -> Comparison:
    """``out`` against ``ref`` under ``|a-b| <= atol + rtol*|ref|`` (see the module docstring)."""
    ref, out = np.asarray(ref), np.asarray(out)
    if tuple(ref.shape) != tuple(out.shape):
        return Comparison(float("inf"), float("inf"), 0, 0.0, False,
                          f"shape {tuple(out.shape)} != expected {tuple(ref.shape)}")
    if ref.size == 0:
        return Comparison(0.0, 0.0, 0, 0.0, True)
    if exact_integers and not (np.issubdtype(ref.dtype, np.floating) or np.issubdtype(out.dtype, np.floating)):
        err = 0.0 if np.array_equal(ref, out) else float("inf")
        return Comparison(err, err, 0, 0.0, err == 0.0)
    fast = _finite_float32(ref, out, atol, rtol, per_tensor)
    if fast is not None:
        return fast
    a, b = ref.astype(np.float64), out.astype(np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    same_inf = np.isinf(a) & (a == b)
    nonfinite = int(np.count_nonzero(~np.isfinite(b) & np.isfinite(a)))
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(both_nan | same_inf, 0.0, np.abs(a - b))
    diff = np.where(np.isnan(diff), np.inf, diff)
    mag = np.where(np.isfinite(a), np.abs(a), 0.0)
    peak = float(mag.max())
    ok = diff <= atol + rtol * (peak if per_tensor else mag)
    with np.errstate(over="ignore"):
        rel = diff / np.maximum(mag, np.finfo(np.float64).tiny)
    return Comparison(float(diff.max()), float(rel.max()), nonfinite, peak, bool(ok.all()))


_MARGIN = 1e-5  # far above float32's rounding of |a-b| and of the bound (~1.2e-7 relative each)


_CHUNK = 1 << 16  # elements per step of the float32 check: its temporaries stay in cache


def _finite_float32(ref: np.ndarray, out: np.ndarray, atol: float, rtol: float,
                    per_tensor: bool) -> Comparison | None:
    """The same verdict as the float64 rule, for two finite float32 arrays that pass it clearly:
    float32 passes over cache-sized chunks where float64 takes a dozen whole-array passes, each
    a fresh allocation to fault in (a YOLO output at batch 32: 0.9 s, then 1.6 s in float64).
    None, for the float64 path to decide, when an element fails, comes within ``_MARGIN`` of
    its bound, or is not finite. The maxima are recomputed in float64 where they lie."""
    if ref.dtype != np.float32 or out.dtype != np.float32:
        return None
    r, o = ref.reshape(-1), out.reshape(-1)
    chunks = [slice(i, i + _CHUNK) for i in range(0, r.size, _CHUNK)]
    peak = max(float(np.abs(r[c]).max()) for c in chunks)  # NaN or inf in ``ref``: not finite
    if not math.isfinite(peak):
        return None
    keep = np.float32(1 - _MARGIN)
    flat_bound = np.float32(atol + rtol * peak) * keep
    worst_abs, worst_rel, zero_diff = (-1.0, 0), (-1.0, 0), 0.0
    for c in chunks:
        diff = np.abs(r[c] - o[c])  # NaN or inf where ``out`` is not finite: then no bound holds
        mag = np.abs(r[c])
        bound = flat_bound if per_tensor else (mag * np.float32(rtol) + np.float32(atol)) * keep
        if not (diff <= bound).all():
            return None
        i = int(diff.argmax())
        if diff[i] > worst_abs[0]:
            worst_abs = (float(diff[i]), c.start + i)
        zero = mag == 0
        if zero.any():
            zero_diff = max(zero_diff, float(diff[zero].max()))
        with np.errstate(over="ignore"):  # an error over a near-zero reference: +inf, the largest
            rel = diff / np.maximum(mag, np.finfo(np.float32).tiny)
        j = int(rel.argmax())
        if rel[j] > worst_rel[0]:
            worst_rel = (float(rel[j]), c.start + j)
    k = worst_abs[1]
    max_abs = abs(float(r[k]) - float(o[k]))
    if zero_diff > 0:
        max_rel = zero_diff / float(np.finfo(np.float64).tiny)
    else:
        k = worst_rel[1]
        max_rel = abs(float(r[k]) - float(o[k])) / max(abs(float(r[k])), np.finfo(np.float64).tiny)
    return Comparison(max_abs, max_rel, 0, peak, True)


def tensor_array(t: torch.Tensor) -> np.ndarray:
    """``t`` as a numpy array to compare: floating types (bfloat16 too) in float64."""
    t = t.detach().cpu()
    return (t.to(torch.float64) if t.is_floating_point() else t).numpy()


def compare_tensors(ref: torch.Tensor, out: torch.Tensor, atol: float, rtol: float, *,
                    per_tensor: bool = False, exact_integers: bool = False) -> Comparison:
    """:func:`compare_arrays` for torch tensors (floating ones compared in float64)."""
    return compare_arrays(tensor_array(ref), tensor_array(out), atol, rtol, per_tensor=per_tensor,
                          exact_integers=exact_integers)


def roundoff_verdict(ref: np.ndarray, out: np.ndarray, ref64: np.ndarray, atol: float,
                     again: Sequence[np.ndarray] = ()) -> tuple[bool, str]:
    """The second rule, for outputs that fail the per-element one: float32 round-off, not a
    wrong export, when the artifact is about as close to the model computed in float64 as eager
    float32 is (``max|a - f64| <= 2 * max|eager - f64| + atol``). A model whose float32 results
    are ill-conditioned (saturated softmax over large logits) then passes; a real error of the
    same size in a well-conditioned model does not.

    ``again``: the same output from eager float32 run in another accumulation order
    (:func:`other_thread_count`). Eager's distance is the largest of them: float32's answer is
    defined only up to that order, and on an ill-conditioned model one order can land 8x closer
    to float64 than another (timm maxvit_large at batch 3: 0.0069 on one thread, 0.055 on two)."""
    if ref.shape != out.shape or ref.shape != ref64.shape or ref.size == 0:
        return False, ""
    r64 = ref64.astype(np.float64)
    eager = max(float(np.nanmax(np.abs(e.astype(np.float64) - r64)))
                for e in (ref, *(a for a in again if a.shape == ref.shape)))
    artifact = float(np.nanmax(np.abs(out.astype(np.float64) - r64)))
    ok = bool(np.isfinite(artifact)) and artifact <= ROUNDOFF_FACTOR * eager + atol
    orders = f" over {1 + len(again)} accumulation orders" if again else ""
    return ok, (f"float64 rule: max|artifact - f64| = {artifact:.3g}, max|eager f32 - f64| = {eager:.3g}{orders}, "
                f"{'within' if ok else 'above'} {ROUNDOFF_FACTOR:g}x + atol")


@contextmanager
def other_thread_count() -> Iterator[None]:
    """Run torch on another number of CPU threads (one, or two when it ran on one), and restore
    it: the same float32 model then sums in another order, which :func:`roundoff_verdict` uses
    to tell how far float32 itself strays."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def onnx_input(t: torch.Tensor) -> torch.Tensor:
    """``t`` as the ONNX model takes it: float64 becomes float32, anything else stays."""
    return t.to(torch.float32) if t.dtype == torch.float64 else t


def onnx_inputs(tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Every tensor through :func:`onnx_input`: what an FX graph that stands for the ONNX model runs on."""
    return tuple(onnx_input(t) for t in tensors)


def feed_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy type a feed of a ``dtype`` input has."""
    return onnx_input(torch.empty((), dtype=dtype)).numpy().dtype


def onnx_feed(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
    """The tensors as one ONNX feed, by input name."""
    return {n: t.numpy() for n, t in zip(names, onnx_inputs(tensors))}


def feeds_at(example: Sequence[torch.Tensor], dims: Sequence[DynamicDim], names: Sequence[str],
             points: Sequence[Mapping[str, int]]) -> Feeds:
    """The example resized to each point, as ONNX feeds; the largest first, so that the batch
    copies' noise is drawn once (:class:`fxtrt.sizes.Noise`)."""
    noise = Noise()
    volume = [math.prod(sizes.values()) for sizes in points]
    feeds = {k: onnx_feed(names, inputs_at(example, dims, points[k], noise))
             for k in sorted(range(len(points)), key=lambda k: -volume[k])}
    return [(dict(points[k]), feeds[k]) for k in range(len(points))]
