"""Run a model on onnxruntime and measure it against a reference: the figures repair judges by.

The check is the one verification uses (:func:`fxtrt.compare.compare_arrays`,
``|a - b| <= atol + rtol * |ref|`` elementwise; integer outputs must be equal), with the worst
error and the count of values that overflowed kept per output. Sessions are opened without ONNX
Runtime's graph fusions, so no fusion hides an fp16 effect.

Example::

    figs = output_figures(["y"], [run_onnx(model, feed)], [reference], atol=1e-2, rtol=1e-2)
    log.info("%s", format_figures(figs))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from fxtrt.backend.onnxruntime import open_session, run_session
from fxtrt.backend.shape_inference import infer_shapes
from fxtrt.compare import compare_arrays
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
    inferred = infer_shapes(model)
    types = dict(base)
    for vi in (*inferred.graph.value_info, *inferred.graph.output):
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def run_onnx(model: onnx.ModelProto, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of ``model`` at ``feed``, unoptimised, so no fusion hides an fp16 effect."""
    try:
        results = run_session(open_session(model, optimize=False, quiet=True), feed)
    except Exception as exc:
        raise PrecisionError(f"onnxruntime could not run the model: {type(exc).__name__}: {exc}") from exc
    return {n: (r.astype(np.float32) if r.dtype == np.float16 else r) for n, r in results.items()}


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
            c = compare_arrays(np.asarray(r[n]), g[n], atol, rtol, exact_integers=True)
            worst = (max(worst[0], c.max_abs), max(worst[1], c.max_rel), max(worst[2], c.nonfinite), worst[3] and c.passed)
        out.append(OutputFigures(n, *worst))
    return tuple(out)


def format_figures(figs: Iterable[OutputFigures]) -> str:
    lines = [f"  {'output':20} {'max_abs':>10} {'max_rel':>10} {'inf/nan':>8}  ok"]
    for f in figs:
        lines.append(f"  {f.name:20} {f.max_abs:10.3g} {f.max_rel:10.3g} {f.nonfinite:8d}  {'yes' if f.passed else 'NO'}")
    return "\n".join(lines)
