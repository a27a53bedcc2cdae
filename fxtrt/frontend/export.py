"""torch.export, called the way capture needs it: named dims over given ranges, constraint
violations kept (with torch's suggested fixes) for capture to act on, every other failure an
fxtrt error at the user's line.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import re
import warnings
from typing import Any, Mapping, Sequence

import torch

from fxtrt.errors import CaptureError, FxtrtError, GeneralizationError
from fxtrt.frontend.chunks import SymbolicChunks
from fxtrt.frontend.output_types import register_transformers_caches, unflattenable_output
from fxtrt.frontend.source import location_of_traceback
from fxtrt.settings import DynamicDim
from fxtrt.torch_log import keep_printed

log = logging.getLogger(__name__)


def describe_failure(exc: BaseException) -> tuple[str, str | None]:
    loc = location_of_traceback(exc.__traceback__)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return first, str(loc) if loc else None


_DATA_DEPENDENT = ("data-dependent", "data dependent", "GuardOnDataDependentSymNode", "unbacked")


class Violation(Exception):
    """torch.export's constraint violation, with its suggested fixes."""

    def __init__(self, message: str, spec: Any) -> None:
        super().__init__(message)
        self.message = message
        self.spec = spec


class SolverFailure(CaptureError):
    """torch.export failed inside its own constraint solver (not in the model): over some narrow
    ranges it derives an impossible ``Dim`` (min == max) while writing its suggested fixes."""


def _in_solver(exc: BaseException) -> bool:
    import traceback

    while exc is not None:
        if any(f.name in ("produce_guards_and_solve_constraints", "prettify_results", "_process_derived_dim_roots")
               for f in traceback.extract_tb(exc.__traceback__)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def torch_dims(dims: Sequence[DynamicDim], ranges: Mapping[str, tuple[int, int]], auto: bool = False) -> dict[str, Any]:
    """One ``torch.export.Dim`` per dynamic dim over ``ranges``; ``step * Dim`` for a stepped dim.
    ``auto``: ``Dim.DYNAMIC`` instead, which lets torch narrow or specialise a dim without a
    constraint violation (and without the solver that writes its suggested fixes)."""
    out: dict[str, Any] = {}
    for d in dims:
        if d.name not in ranges:
            continue
        lo, hi = ranges[d.name]
        if auto:
            out[d.name] = torch.export.Dim.DYNAMIC(min=lo, max=hi)
        elif d.step:
            out[d.name] = d.step * torch.export.Dim(f"{d.name}_div{d.step}", min=lo // d.step, max=hi // d.step)
        else:
            out[d.name] = torch.export.Dim(d.name, min=lo, max=hi)
    return out


def dynamic_shapes(n_inputs: int, dims: Sequence[DynamicDim], named: Mapping[str, Any]) -> tuple[Any, ...]:
    """torch.export's ``dynamic_shapes`` for positional inputs: ``{axis: Dim}`` per input."""
    spec: list[dict[int, Any] | None] = [None] * n_inputs
    for d in dims:
        if d.name in named:
            for i, axis in d.sites:
                spec[i] = {**(spec[i] or {}), axis: named[d.name]}
    return tuple(spec)


def signature_spec(model: torch.nn.Module, spec: tuple[Any, ...]) -> tuple[Any, ...]:
    """``spec`` (one entry per positional input) in the structure torch.export matches against
    forward's signature: inputs that land in ``*args`` are one tuple (``forward(self, *a)`` with
    two inputs takes ``((spec0, spec1),)``)."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return spec
    if not any(p.kind is p.VAR_POSITIONAL for p in params):
        return spec
    out: list[Any] = []
    for p in params:
        if p.kind is p.VAR_POSITIONAL:  # torch binds an empty *args to nothing
            return (*out, tuple(spec[len(out):])) if len(out) < len(spec) else tuple(out)
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and len(out) < len(spec):
            out.append(spec[len(out)])
    return spec


def _fxtrt_error(exc: BaseException | None) -> FxtrtError | None:
    """The FxtrtError that ``exc`` is, or that torch wrapped it around."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, FxtrtError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def export_once(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], spec: Any = None) -> torch.export.ExportedProgram:
    """torch.export (non-strict) with failures turned into fxtrt errors at the user's line.

    A constraint violation (a dim the model specialises or limits) is raised as ``Violation``
    for :func:`capture` to act on. Any other failure is checked against an eager run at the same
    shapes, so the error says whether the model or torch.export failed.
    """
    register_transformers_caches()
    printed = io.StringIO()  # a failed torch.export prints its partial FX graph on stderr, twice
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(printed), SymbolicChunks():
            warnings.simplefilter("always")
            # Facts torch cannot prove symbolically become runtime asserts, which fxtrt checks over
            # the whole range (frontend.guards) instead of losing the dim.
            ep = torch.export.export(model, inputs, dynamic_shapes=None if spec is None else signature_spec(model, spec),
                                     strict=False,
                                     prefer_deferred_runtime_asserts_over_guards=spec is not None)
        for w in {str(w.message) for w in caught}:
            log.debug("torch.export: %s", w)
        return ep
    except Exception as exc:  # torch.export raises many unrelated types
        own = _fxtrt_error(exc)
        if own is not None:  # raised on purpose while tracing (frontend.chunks)
            raise own from None
        if printed.getvalue().strip():
            keep_printed("torch.export", printed.getvalue())
        text = str(exc)
        if spec is not None and "Suggested fixes" in text and (
                "Constraints violated" in text or "Specializations unexpectedly required" in text):
            raise Violation(text, spec) from exc
        message, source = describe_failure(exc)
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
        if spec is not None and _in_solver(exc):
            raise SolverFailure(
                f"torch.export failed in its constraint solver at input shapes {shapes}: {type(exc).__name__}: "
                f"{message}", hint="widen the dynamic dims' ranges, or give a dim a step") from exc
        if any(k in f"{type(exc).__name__} {exc}" for k in _DATA_DEPENDENT):
            raise GeneralizationError(
                f"the model's shapes depend on tensor values (e.g. .item() or .tolist()): {message}",
                source=source,
                hint="compute sizes from x.shape instead of from tensor values, or keep that input static",
            ) from exc
        output_error = unflattenable_output(exc, model)
        if output_error is not None:
            raise output_error from exc
        eager = eager_failure(model, inputs)
        if eager is not None:
            raise CaptureError(
                f"the model itself fails at input shapes {shapes} (run eagerly, without torch.export): {eager[0]}",
                source=eager[1],
                hint="fxtrt traces the model at sizes other than the example's: make it run at every size in the "
                     "declared ranges, or narrow the ranges to where it does",
            ) from exc
        raise CaptureError(
            f"torch.export could not capture the model at input shapes {shapes}, though the model runs eagerly "
            f"there: {type(exc).__name__}: {message}",
            source=source,
            hint=("torch.export cannot trace the code at that line: rewrite it in torch operations on tensors" if source
                  else "find the code torch.export names above and rewrite it in torch operations on tensors"),
        ) from exc


def suggested_fixes(violation: Violation, dims: Sequence[DynamicDim]) -> dict[str, int | tuple[int | None, int | None]]:
    """torch's suggested fixes per dim: a constant (the dim is baked in) or a narrower range."""
    from torch.export.dynamic_shapes import refine_dynamic_shapes_from_suggested_fixes

    head, _, fixes = violation.message.partition("Suggested fixes:")
    block = []
    for line in fixes.strip("\n").splitlines():  # the fixes end at the first blank line
        if not line.strip():
            break
        block.append(line)
    try:
        refined = refine_dynamic_shapes_from_suggested_fixes(head + "Suggested fixes:\n" + "\n".join(block),
                                                             violation.spec)
    except Exception as exc:  # a message torch cannot read back: report it as it is
        raise CaptureError(f"torch.export could not keep the dynamic dims: {first_lines(violation.message)}",
                           hint="run fxtrt explain on the model to see where sizes are baked in") from exc
    out: dict[str, int | tuple[int | None, int | None]] = {}
    for d in dims:
        i, axis = d.sites[0]
        before = (violation.spec[i] or {}).get(axis)
        after = (refined[i] or {}).get(axis) if isinstance(refined[i], dict) else None
        if before is None or after is before:
            continue
        if isinstance(after, int):
            out[d.name] = after
        elif after is not None:
            lo, hi = getattr(after, "min", None), getattr(after, "max", None)
            out[d.name] = (lo, hi)
    return out


def proven_relations(message: str, dims: Sequence[DynamicDim]) -> list[tuple[str, str, str]]:
    """``(a, b, relation)`` for each suggested fix that ties two declared dims together: ``a = b``
    (relation ``"=="``: torch.export proves them one size) or ``a = 2*b`` and the like (relation
    as torch wrote it). A stepped dim appears to torch as ``NAME_divSTEP``."""
    names = {d.name: d.name for d in dims}
    names.update({f"{d.name}_div{d.step}": d.name for d in dims if d.step})
    _, _, fixes = message.partition("Suggested fixes:")
    out = []
    for line in fixes.strip("\n").splitlines():
        if not line.strip():
            break
        lhs, eq, rhs = (part.strip() for part in line.partition("="))
        if not eq or lhs not in names:
            continue
        if rhs in names and names[rhs] != names[lhs]:
            out.append((names[lhs], names[rhs], "=="))
            continue
        other = next((names[w] for w in re.findall(r"[A-Za-z_]\w*", rhs) if w in names and names[w] != names[lhs]),
                     None)
        if other is not None:
            out.append((names[lhs], other, f"{lhs} = {rhs}"))
    return out


def first_lines(message: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip() and "TORCH_LOGS" not in ln]
    return " ".join(lines[:n])


def dim_reason(message: str, dim: DynamicDim) -> str:
    """The lines of torch's message about ``dim``: the guard that specialised it."""
    lines = [ln.strip(" -") for ln in message.splitlines() if f" {dim.name} " in f" {ln} " or f"{dim.name}_div" in ln]
    lines = [ln for ln in lines if not ln.startswith(("Suggested", f"{dim.name} ="))]
    text = lines[0] if lines else first_lines(message, 1)
    for cut in (" If you're using", ".Specializations", " Specializations"):
        text = text.split(cut)[0]
    return text[:400]


def eager_failure(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[str, str | None] | None:
    """Run the model eagerly; (first line of the error, user's file:line) if it fails."""
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as exc:  # any failure of the user's model is the answer we want
        return describe_failure(exc)
    return None
