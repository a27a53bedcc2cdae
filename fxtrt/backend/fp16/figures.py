"""Run a model on onnxruntime and measure it against a reference: the figures repair judges by.

The check is the one verification uses, ``|a - b| <= atol + rtol * |ref|`` elementwise, with
the worst error and the count of values that overflowed kept per output.

Example::

    figs = output_figures(["y"], [run_onnx(model, feed)], [reference], atol=1e-2, rtol=1e-2)
    log.info("%s", format_figures(figs))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnx.shape_inference
from onnx import helper

from fxtrt.errors import ConfigError, PrecisionError


@dataclass(frozen=True)
class OutputFigures:
    """Worst error of one output over all feeds: max |a-b|, max |a-b|/|ref|, non-finite count."""

    name: str
    max_abs: float
    max_rel: float
    nonfinite: int
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "max_abs": self.max_abs, "max_rel": self.max_rel, "nonfinite": self.nonfinite,
                "passed": self.passed}


def expose(model: onnx.ModelProto, names: Sequence[str], types: Mapping[str, int]) -> onnx.ModelProto:
    """The model with ``names`` added as graph outputs, so ORT returns the intermediates."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {vi.name for vi in out.graph.output}
    produced = {v for n in out.graph.node for v in n.output}
    for v in names:
        if v not in present and v in produced and v in types:
            out.graph.output.append(helper.make_tensor_value_info(v, types[v], None))
    return out


def real_types(model: onnx.ModelProto, base: Mapping[str, int]) -> dict[str, int]:
    """``base`` (the fp32 model's value types) updated with the types ``model`` really has."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = dict(base)
    for vi in (*inferred.graph.value_info, *inferred.graph.output):
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def run_onnx(model: onnx.ModelProto, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of ``model`` at ``feed``, unoptimised, so no fusion hides an fp16 effect."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # no fusions hiding fp16 effects
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        wanted = {i.name: i.type for i in session.get_inputs()}
        fed = {k: (np.asarray(v).astype(np.float16) if wanted.get(k) == "tensor(float16)" else np.asarray(v))
               for k, v in feed.items() if k in wanted}
        names = [o.name for o in session.get_outputs()]
        results = session.run(names, fed)
    except Exception as exc:
        raise PrecisionError(f"onnxruntime could not run the model: {type(exc).__name__}: {exc}") from exc
    return {n: (r.astype(np.float32) if r.dtype == np.float16 else r) for n, r in zip(names, results)}


def compare(ref: np.ndarray, out: np.ndarray, atol: float, rtol: float,
            per_tensor: bool = False) -> tuple[float, float, int, bool]:
    """(max |a-b|, max |a-b|/|ref|, non-finite count, passed) under ``|a-b| <= atol + rtol*|ref|``.

    Same rule as fxtrt.backend.verify: equal infinities and NaN against NaN match; any other
    non-finite difference fails. Non-float tensors must be equal. ``per_tensor`` uses the
    tensor's largest finite ``|ref|`` in place of each element's.
    """
    ref, out = np.asarray(ref), np.asarray(out)
    if ref.shape != out.shape:
        return float("inf"), float("inf"), 0, False
    if ref.size == 0:
        return 0.0, 0.0, 0, True
    if not (np.issubdtype(ref.dtype, np.floating) or np.issubdtype(out.dtype, np.floating)):
        equal = bool(np.array_equal(ref, out))
        return (0.0 if equal else float("inf")), (0.0 if equal else float("inf")), 0, equal
    a, b = ref.astype(np.float64), out.astype(np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    same_inf = np.isinf(a) & (a == b)
    nonfinite = int(np.count_nonzero(~np.isfinite(b) & np.isfinite(a)))
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(both_nan | same_inf, 0.0, np.abs(a - b))
    diff = np.where(np.isnan(diff), np.inf, diff)
    mag = np.where(np.isfinite(a), np.abs(a), 0.0)
    ok = diff <= atol + rtol * (mag.max() if per_tensor else mag)
    rel = diff / np.maximum(mag, np.finfo(np.float64).tiny)
    return float(diff.max()), float(rel.max()), nonfinite, bool(ok.all())


def output_figures(
    names: Sequence[str],
    got: Sequence[Mapping[str, np.ndarray]],
    reference: Sequence[Mapping[str, np.ndarray]],
    atol: float,
    rtol: float,
) -> tuple[OutputFigures, ...]:
    """Per output, its worst figures over every feed."""
    out = []
    for n in names:
        worst = (0.0, 0.0, 0, True)
        for g, r in zip(got, reference):
            if n not in r:
                raise ConfigError(f"the reference has no output {n!r}; it has {sorted(r)}")
            a, rel, nf, ok = compare(np.asarray(r[n]), g[n], atol, rtol)
            worst = (max(worst[0], a), max(worst[1], rel), max(worst[2], nf), worst[3] and ok)
        out.append(OutputFigures(n, *worst))
    return tuple(out)


def format_figures(figs: Iterable[OutputFigures]) -> str:
    lines = [f"  {'output':20} {'max_abs':>10} {'max_rel':>10} {'inf/nan':>8}  ok"]
    for f in figs:
        lines.append(f"  {f.name:20} {f.max_abs:10.3g} {f.max_rel:10.3g} {f.nonfinite:8d}  {'yes' if f.passed else 'NO'}")
    return "\n".join(lines)
