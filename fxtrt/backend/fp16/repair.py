"""Repair: keep adding float32 nodes until the fp16 model matches the reference.

Each round materialises the plan's float32 emulation (:mod:`.materialize`), compares every
output with the reference, and on failure keeps in float32 the nodes where divergence starts.
Once the emulation passes, the real fp16 model must pass on onnxruntime too.

Example::

    result = repair_fp16(model, feeds=[{"x": x1}, {"x": x8}], reference=[{"y": y1}, {"y": y8}])
    result.rounds[-1].passed, [k.name for k in result.kept]
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping, Sequence

import numpy as np
import onnx

from fxtrt.backend.fp16.figures import OutputFigures, expose, format_figures, output_figures, real_types, run_onnx
from fxtrt.backend.fp16.materialize import finish, materialize
from fxtrt.backend.fp16.plan import DEFAULT_FP32_OPS, FP16, FP16_MAX, FP32, SHAPE_ONLY_OPS, Fp16Graph, KeptNode
from fxtrt.compare import compare_arrays
from fxtrt.errors import ConfigError, PrecisionError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundFigures:
    """One conversion round: errors of the fp16 emulation (and of the real fp16 model on ORT,
    once the emulation passes), where divergence started, and which nodes it then keeps."""

    round: int
    fp32_nodes: int
    outputs: tuple[OutputFigures, ...]
    ort_outputs: tuple[OutputFigures, ...]
    first_divergence: tuple[str, ...]
    added: tuple[str, ...]
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "fp32_nodes": self.fp32_nodes, "outputs": [o.to_dict() for o in self.outputs],
                "ort_outputs": [o.to_dict() for o in self.ort_outputs],
                "first_divergence": list(self.first_divergence), "added": list(self.added), "passed": self.passed}


@dataclass(frozen=True)
class Fp16Result:
    """The fp16 model, the nodes kept in float32, and the figures of every round."""

    model: onnx.ModelProto = field(repr=False)
    kept: tuple[KeptNode, ...]
    rounds: tuple[RoundFigures, ...]
    passed: bool
    atol: float
    rtol: float

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "atol": self.atol, "rtol": self.rtol,
                "kept": [k.to_dict() for k in self.kept], "rounds": [r.to_dict() for r in self.rounds]}


def repair_fp16(
    fp32_model: onnx.ModelProto,
    feeds: Sequence[Mapping[str, np.ndarray]],
    reference: Sequence[Mapping[str, np.ndarray]] | None = None,
    *,
    atol: float = 1e-2,
    rtol: float = 1e-2,
    max_rounds: int = 10,
    keep_fp32: Collection[str] = (),
    keep_io_types: bool = True,
    fp32_ops: Collection[str] = DEFAULT_FP32_OPS,
    raise_on_failure: bool = True,
) -> Fp16Result:
    """Convert to fp16 and keep adding float32 nodes until every output matches the reference.

    Each round checks ``|a - b| <= atol + rtol * |ref|`` elementwise on every output for every
    feed (``reference``: the float32 PyTorch outputs, one dict per feed; default: the float32
    ONNX model's own). On failure it compares every intermediate value with the float32 model,
    in graph order, and keeps in float32 the nodes where divergence starts: a node whose output
    diverges although its inputs don't. If that node is already float32, the rounding of its
    inputs is what it amplifies, so the fp16 nodes feeding it are kept instead. Stops when the
    outputs pass, or raises PrecisionError (with the figures and the kept list, also as
    ``error.result``) when nothing is left to keep or after ``max_rounds`` repairs.
    """
    if not feeds:
        raise ConfigError("repair_fp16 needs at least one feed")
    if max_rounds < 0:
        raise ConfigError(f"max_rounds must be >= 0, got {max_rounds}")
    graph = Fp16Graph(fp32_model, fp32_ops)
    keep = graph.kept_by_user(keep_fp32)
    feeds = [dict(f) for f in feeds]
    fp32_values = [run_onnx(expose(fp32_model, graph.compared, graph.types), f) for f in feeds]
    reference = _reference(graph, fp32_values, reference, len(feeds), atol, rtol)

    rounds: list[RoundFigures] = []
    for r in range(max_rounds + 1):
        kinds, kept = graph.plan(keep)
        fp32_count = sum(k == FP32 for i, k in enumerate(kinds) if graph.touches_float(i))
        figs, ort_figs, model, values = _run_round(graph, kinds, kept, feeds, reference, keep_io_types, atol, rtol)
        if model is not None and all(f.passed for f in ort_figs):
            rounds.append(RoundFigures(r, fp32_count, figs, ort_figs, (), (), True))
            log.info("fp16: passed in round %d with %d node(s) kept in fp32", r, len(kept))
            return Fp16Result(model, kept, tuple(rounds), True, atol, rtol)

        first, new = _divergence(graph, kinds, fp32_values, values, atol, rtol, r + 1)
        new = [k for k in new if k.name not in keep]
        rounds.append(RoundFigures(r, fp32_count, figs, ort_figs, tuple(first), tuple(k.name for k in new), False))
        log.info("fp16 round %d: diverges first at %s; keeping %s in fp32", r, first, [k.name for k in new])
        if not new or r == max_rounds:
            why = ("nothing is left to keep in fp32" if not new else f"still failing after {max_rounds} repair round(s)")
            result = Fp16Result(model or finish(graph, kinds, kept, keep_io_types), kept, tuple(rounds), False,
                                atol, rtol)
            if not raise_on_failure:
                return result
            raise _precision_error(result, why)
        for k in new:
            keep[k.name] = k
    raise AssertionError("unreachable")


def _reference(graph: Fp16Graph, fp32_values: Sequence[Mapping[str, np.ndarray]],
               reference: Sequence[Mapping[str, np.ndarray]] | None, n_feeds: int,
               atol: float, rtol: float) -> Sequence[Mapping[str, np.ndarray]]:
    """What fp16 must match: ``reference``, once the float32 ONNX model is shown to match it
    itself (else no fp16 model can, and that is no precision problem); by default the float32
    ONNX model's own outputs."""
    outputs = list(graph.outputs)
    if reference is None:
        return [{o: vals[o] for o in outputs} for vals in fp32_values]
    if len(reference) != n_feeds:
        raise ConfigError(f"got {n_feeds} feeds but {len(reference)} references")
    own = output_figures(outputs, [{o: v[o] for o in outputs} for v in fp32_values], reference, atol, rtol)
    if not all(f.passed for f in own):
        raise PrecisionError(
            "the float32 ONNX model itself does not match the reference, so fp16 can't either:\n"
            + format_figures(own), rows=[f.to_dict() for f in own],
            hint="verify the fp32 export first; this is not a precision problem")
    return reference


def _run_round(
    graph: Fp16Graph,
    kinds: Sequence[str],
    kept: tuple[KeptNode, ...],
    feeds: Sequence[Mapping[str, np.ndarray]],
    reference: Sequence[Mapping[str, np.ndarray]],
    keep_io_types: bool,
    atol: float,
    rtol: float,
) -> tuple[tuple[OutputFigures, ...], tuple[OutputFigures, ...], onnx.ModelProto | None,
           list[dict[str, np.ndarray]]]:
    """One round: the float32 emulation of the plan against the reference, then, once that
    passes, the real fp16 model on onnxruntime. Returns both figures, the real model (None while
    the emulation fails) and the values to look for divergence in, where it shows."""
    outputs = list(graph.outputs)
    emulated = materialize(graph, kinds, emulate=True, keep_io_types=keep_io_types)
    values = [run_onnx(expose(emulated, graph.compared, graph.types), f) for f in feeds]
    figs = output_figures(outputs, values, reference, atol, rtol)
    if not all(f.passed for f in figs):
        return figs, (), None, values
    model = finish(graph, kinds, kept, keep_io_types)
    real_values = [run_onnx(expose(model, graph.compared, real_types(model, graph.types)), f) for f in feeds]
    ort_figs = output_figures(outputs, real_values, reference, atol, rtol)
    return figs, ort_figs, model, (values if all(f.passed for f in ort_figs) else real_values)


def _divergence(
    graph: Fp16Graph,
    kinds: Sequence[str],
    ref: Sequence[Mapping[str, np.ndarray]],
    got: Sequence[Mapping[str, np.ndarray]],
    atol: float,
    rtol: float,
    next_round: int,
) -> tuple[list[str], list[KeptNode]]:
    """Values where divergence starts, and the nodes to keep in fp32 for them.

    A graph output diverges when it fails the elementwise check; an intermediate value when
    its error exceeds ``atol + rtol * max|ref|`` over the whole tensor (elementwise, the
    plain rounding of a large tensor's near-zero entries, amplified by a later Mul, would
    count as divergence and keep harmless nodes), or when it overflows. Divergence starts at
    a node whose output diverges while its inputs don't, or whose output overflows while
    its inputs are finite.
    """
    bad = _diverged_values(graph, ref, got, atol, rtol)
    overflow = {v for v, (_, _, nonfinite) in bad.items() if nonfinite}
    new: dict[str, KeptNode] = {}
    _keep_out_of_range(graph, kinds, ref, next_round, new)
    first = _keep_where_divergence_starts(graph, kinds, bad, overflow, next_round, new)
    return first, list(new.values())


def _diverged_values(graph: Fp16Graph, ref: Sequence[Mapping[str, np.ndarray]],
                     got: Sequence[Mapping[str, np.ndarray]], atol: float,
                     rtol: float) -> dict[str, tuple[float, float, int]]:
    """Every compared value that fails its check on some feed: its worst max |err|, max rel err
    and overflow count over the feeds (graph outputs elementwise, intermediates per tensor)."""
    outputs = set(graph.outputs)
    bad: dict[str, tuple[float, float, int]] = {}
    for r, g in zip(ref, got):
        for v in graph.compared:
            if v not in r or v not in g:
                continue
            c = compare_arrays(r[v], g[v], atol, rtol, per_tensor=v not in outputs, exact_integers=True)
            if not c.passed:
                prev = bad.get(v, (0.0, 0.0, 0))
                bad[v] = (max(prev[0], c.max_abs), max(prev[1], c.max_rel), max(prev[2], c.nonfinite))
    return bad


def _keep_out_of_range(graph: Fp16Graph, kinds: Sequence[str], ref: Sequence[Mapping[str, np.ndarray]],
                       next_round: int, new: dict[str, KeptNode]) -> None:
    """A value beyond fp16's range is inf in fp16 wherever it is stored: its producer and every
    node reading it in fp16 must be fp32, all in this round (added to ``new``)."""
    for v in graph.compared:
        peak = max((_finite_peak(r[v]) for r in ref if v in r), default=0.0)
        if peak <= FP16_MAX or not graph.is_float(v):
            continue
        sites = [graph.producer[v]] + [i for i, j in graph.readers.get(v, ())
                                        if graph.nodes[i].op_type not in SHAPE_ONLY_OPS]
        for i in sites:
            if kinds[i] == FP16:
                name = graph.names[i]
                role = "produces" if i == graph.producer[v] else "reads"
                new.setdefault(name, KeptNode(
                    name, graph.nodes[i].op_type, graph.outs(i),
                    f"{role} {v!r}, whose values reach {peak:g}, beyond fp16's largest value {FP16_MAX:g}",
                    next_round, "diverged"))


def _keep_where_divergence_starts(graph: Fp16Graph, kinds: Sequence[str], bad: Mapping[str, tuple[float, float, int]],
                                  overflow: set[str], next_round: int, new: dict[str, KeptNode]) -> list[str]:
    """The values where divergence starts (a node whose output diverges while its inputs don't,
    or overflows while its inputs are finite); their nodes, or for a node already fp32 the fp16
    nodes feeding it, are added to ``new``."""
    first: list[str] = []
    for i, node in enumerate(graph.nodes):
        outs = [v for v in node.output if v in bad]
        ins = [u for u in node.input if u]
        if not outs:
            continue
        starts = not any(u in bad for u in ins)
        overflows = [v for v in outs if v in overflow and not any(u in overflow for u in ins)]
        if not (starts or overflows):
            continue
        v = overflows[0] if overflows else outs[0]
        max_abs, max_rel, nonfinite = bad[v]
        what = (f"{nonfinite} value(s) overflow to inf/nan in fp16" if nonfinite else
                f"max |err| {max_abs:.3g}, max rel err {max_rel:.3g}")
        first.append(v)
        if kinds[i] == FP16:
            name = graph.names[i]
            new.setdefault(name, KeptNode(name, node.op_type, graph.outs(i),
                                          f"fp16 diverges first at its output {v!r}: {what}", next_round, "diverged"))
            continue
        # Already fp32 and its inputs pass, yet its output diverges: it amplifies the fp16
        # rounding upstream, so keep the nearest fp16 nodes feeding it.
        for j in _fp16_sources(graph, kinds, i):
            name = graph.names[j]
            new.setdefault(name, KeptNode(
                name, graph.nodes[j].op_type, graph.outs(j),
                f"feeds {graph.names[i]} ({node.op_type}, fp32), whose output {v!r} amplifies the fp16 rounding "
                f"upstream: {what}", next_round, "diverged"))
    return first


def _finite_peak(arr: np.ndarray) -> float:
    arr = np.asarray(arr)
    if not np.issubdtype(arr.dtype, np.floating) or arr.size == 0:
        return 0.0
    finite = np.abs(arr[np.isfinite(arr)])
    return float(finite.max()) if finite.size else 0.0


def _fp16_sources(graph: Fp16Graph, kinds: Sequence[str], i: int) -> list[int]:
    """The nearest fp16 nodes upstream of node ``i`` through float values (in graph order)."""
    found: set[int] = set()
    seen: set[int] = set()
    stack = [i]
    while stack:
        k = stack.pop()
        for u in graph.nodes[k].input:
            j = graph.producer.get(u)
            if j is None or j in seen or j in graph.const_nodes or not graph.is_float(u):
                continue
            seen.add(j)
            if kinds[j] == FP16:
                found.add(j)
            else:
                stack.append(j)
    return sorted(found)


def _precision_error(result: Fp16Result, why: str) -> PrecisionError:
    last = result.rounds[-1]
    kept = "\n".join(f"  {k.name} ({k.op_type}) -> {', '.join(k.outputs)}: {k.reason}" for k in result.kept) or "  (none)"
    err = PrecisionError(
        f"fp16 does not match the reference within atol={result.atol:g}, rtol={result.rtol:g}: {why}.\n"
        f"Round {last.round} (fp16 emulation):\n{format_figures(last.outputs)}\n"
        + (f"Round {last.round} (fp16 model on onnxruntime):\n{format_figures(last.ort_outputs)}\n"
           if last.ort_outputs else "")
        + f"Diverging first at: {', '.join(last.first_divergence) or '(nowhere in particular)'}\n"
        f"Kept in fp32 ({len(result.kept)}):\n{kept}",
        rows=[r.to_dict() for r in result.rounds],
        node=last.first_divergence[0] if last.first_divergence else None,
        hint="keep this model in fp32, or pass keep_fp32=[...] / relax atol, rtol if the error is plain rounding",
    )
    err.result = result  # type: ignore[attr-defined]
    return err
