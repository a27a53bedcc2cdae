"""Outcomes of one (model, exporter) cell, and the comparison that decides them.

PASS    ran and matched eager at every checked batch size
SILENT  ran, but some output had the wrong shape or wrong values
LOUD    the export succeeded, but running it (at some batch size) raised
REFUSED the exporter raised a deliberate, clear error (fxtrt: FxtrtError)
CRASH   the exporter raised anything else, died, or timed out
UNSTABLE ran, and differs from eager only where eager float32 differs from itself:
        run again on another thread count (another summation order), eager moves
        by more than the tolerance, so the reference decides nothing there
        (ultralytics rtdetr-l: top-300 detections whose scores tie to 1e-6 swap
        places between one thread and two)

SILENT outranks LOUD, and LOUD outranks UNSTABLE: one wrong answer at any batch
size makes the cell SILENT even if another batch size raised.  ERROR is not an exporter outcome:
it marks a cell the harness itself could not run.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np


class Outcome(str, Enum):
    PASS = "PASS"
    SILENT = "SILENT"
    LOUD = "LOUD"
    REFUSED = "REFUSED"
    CRASH = "CRASH"
    UNSTABLE = "UNSTABLE"
    ERROR = "ERROR"


EXPORTER_OUTCOMES = (Outcome.PASS, Outcome.SILENT, Outcome.LOUD, Outcome.REFUSED, Outcome.CRASH, Outcome.UNSTABLE)


@dataclass(frozen=True)
class Tolerance:
    """An output matches when ``max|onnx - eager| <= atol + rtol * max|eager|``.

    Scaled by the output's largest magnitude rather than elementwise, since
    random-weight models have many outputs near zero.
    """

    atol: float = 1e-5
    rtol: float = 1e-3


@dataclass(frozen=True)
class OutputCheck:
    ok: bool
    max_abs_err: float | None
    max_rel_err: float | None
    reason: str = ""


def check_output(got: np.ndarray, want: np.ndarray, tol: Tolerance) -> OutputCheck:
    """Compare one ONNX output with the eager output: shape, dtype kind, then values."""
    if got.shape != want.shape:
        return OutputCheck(False, None, None, f"shape {list(got.shape)} != eager {list(want.shape)}")
    got64 = got.astype(np.float64)
    want64 = want.astype(np.float64)
    if want.dtype.kind in "biu" or got.dtype.kind in "biu":
        diff = np.abs(got64 - want64)
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(want64).max()) if diff.size else 0.0
        mismatched = int(np.count_nonzero(diff))
        reason = f"{mismatched} integer/bool elements differ" if mismatched else ""
        return OutputCheck(mismatched == 0, max_abs, max_abs / scale if scale else max_abs, reason)
    same_nan = np.isnan(got64) == np.isnan(want64)
    if not same_nan.all():
        return OutputCheck(False, float("nan"), float("nan"), "NaN where eager has none (or vice versa)")
    finite = ~np.isnan(want64)
    diff = np.abs(got64[finite] - want64[finite])
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(want64[finite]).max()) if diff.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    ok = bool(max_abs <= tol.atol + tol.rtol * scale)
    reason = "" if ok else f"max abs err {max_abs:.3g} > {tol.atol:g} + {tol.rtol:g} * {scale:.3g}"
    return OutputCheck(ok, max_abs, max_rel, reason)


def max_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None
