"""Cleanup at its cost (issue 19, part 2): what each ONNX cleanup costs, and what it buys, on fxtrt's own graphs.

    python -m benchmarks.cleanup_compare [--models GLOBS] [--out DIR] [--repeats 3] [--rounds 20] [--list]

For every model of the fidelity benchmark's quick set, plus resnet50, a 4-layer BERT (batch and
sequence dynamic) and yolov8n (batch and H x W, step 32), fxtrt compiles the model up to the
point where cleanup would start, twice: with torch.onnx's optimizer on (what fxtrt does) and off.
Each cleanup candidate then runs on that graph, and for each one this records the wall time
(median of ``--repeats``), the node and shape-op counts (``benchmarks.onnx_stats``), whether every
symbolic dim of the graph's inputs and outputs stays symbolic, whether ONNX Runtime still runs it
and matches the uncleaned graph at two sizes of every dynamic dim, and its latency at batch 8,
interleaved across candidates. Results go to ``benchmarks/results/<date>-cleanup/`` (or ``--out``):
cleanup.json (everything) and tables.md (a summary per optimizer setting, one table per model);
the reading of them, cleanup.md, is written by hand.

The cleanup runs where fxtrt runs it, after the 18 -> 17 op-set conversion. The conversion needs
constant Reduce axes, which only torch.onnx's optimizer gives, so each candidate is also run
before the conversion (on the opset-18 graph), and the conversion's time and outcome after it
are recorded; with the optimizer off and a graph that does not convert, that order gives the row.

Latency runs on one ONNX Runtime thread by default (``--latency-threads``): the graphs are
compared, not the machine, and one thread is far less disturbed by other work on a shared one.
Candidates that leave the same graph (a name-blind digest) share one session in the rounds.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import hashlib
import importlib.metadata
import io
import json
import logging
import math
import os
import re
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from unittest import mock

import numpy as np
import onnx
import onnx.shape_inference

from benchmarks.corpus import _matches, all_specs, select_specs
from benchmarks.corpus.transformers_models import VOCAB, text_model
from benchmarks.exporters import ExportSpec, _forward_arg_names
from benchmarks.inputs import token_ids
from benchmarks.model_prep import make_inputs, prepare_model
from benchmarks.model_spec import Case, DynamicDim, ModelSpec, case_text
from benchmarks.onnx_stats import graph_stats
from benchmarks.ort_runner import build_feed, make_session, run

RESULTS_ROOT = Path(__file__).resolve().parent / "results"
SEED = 0
OPSET = 17
LATENCY_BATCH = 8
CHECK_BATCHES = (2, 3)  # numerics: batch 2 with every other dim at its min, batch 3 with every dim at its max
ATOL, RTOL = 1e-4, 1e-3  # fxtrt's verification defaults (fxtrt.settings.Settings)
BASELINE = "today"
WEIGHT_ELEMENTS = 1024  # initializers larger than this are weights: never a shape, a size or an index list
_VERSIONED = ("torch", "onnx", "onnxruntime", "onnxsim", "onnxslim", "onnxscript", "onnx-ir", "onnx_graphsurgeon")
log = logging.getLogger("benchmarks.cleanup_compare")

BERT4 = ModelSpec(
    name="extra/bert4", build=text_model("BertModel", "BertConfig", vocab_size=VOCAB, num_hidden_layers=4,
                                         hidden_size=256, num_attention_heads=4, intermediate_size=1024),
    make_inputs=token_ids(VOCAB, "seq"), input_names=("input_ids", "attention_mask"), batch_dims=(0, 0),
    dynamic={0: {1: DynamicDim("seq", 16, 64, 128)}, 1: {1: DynamicDim("seq", 16, 64, 128)}},
    note="issue 19's latency case: 4 layers, hidden 256, sequence 64 at batch 8",
)
EXTRA_MODELS = ("tv/resnet50", "dyn/yolov8n")


# --------------------------------------------------------------------------- the candidates

@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxsim, onnxslim and GraphSurgeon print progress and summaries, onnxsim's C++ core straight to
    file descriptor 1; a benchmark prints its own lines only, so both Python's stdout and fd 1 go
    to /dev/null meanwhile (C's buffer is flushed before fd 1 is given back)."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            os.dup2(null.fileno(), 1)
            warnings.simplefilter("ignore")
            yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """What fxtrt's cleanup runs first: ONNX shape inference with data propagation."""
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


def graphsurgeon(model: onnx.ModelProto) -> onnx.ModelProto:
    """fxtrt's GraphSurgeon step: fold constants, drop dead nodes, sort."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    with _quiet():
        graph.fold_constants(error_ok=True).cleanup(remove_unused_graph_inputs=False).toposort()
    return gs.export_onnx(graph, do_type_check=False)


def onnxsim_simplify(model: onnx.ModelProto, **options: Any) -> onnx.ModelProto:
    """onnxsim as fxtrt calls it (no random checks, no proof); ``options`` e.g. skip_shape_inference."""
    import onnxsim

    with _quiet():
        simplified, ok = onnxsim.simplify(model, check_n=0, certify=False, **options)
    if not ok:
        raise RuntimeError("onnxsim could not validate its result")
    return simplified


def onnxslim_slim(model: onnx.ModelProto, **options: Any) -> onnx.ModelProto:
    """onnxslim with its defaults (folding, fusions, its symbolic shape inference); ``options`` e.g. no_shape_infer."""
    import onnxslim

    with _quiet():
        slimmed = onnxslim.slim(model, **options)
    if slimmed is None:
        raise RuntimeError("onnxslim returned no model")
    return slimmed


def on_ir(*steps: Callable[[Any], Any]) -> Callable[[onnx.ModelProto], onnx.ModelProto]:
    """Run onnx_ir / onnxscript passes on the proto fxtrt holds: the timing includes the proto -> IR -> proto
    round trip, which fxtrt would pay unless the passes ran on torch.onnx's IR before it is serialised."""
    import onnx_ir as ir

    def clean(model: onnx.ModelProto) -> onnx.ModelProto:
        graph = ir.from_proto(model)
        with _quiet():
            for step in steps:
                step(graph)
        return ir.to_proto(graph)

    return clean


def _ir_optimize(model: Any) -> None:
    """What torch.onnx's optimize=True runs, without onnxscript's fusion rewrites (onnx_fusions)."""
    import onnxscript.optimizer

    onnxscript.optimizer.optimize_ir(model)


def _ir_fold(model: Any) -> None:
    """onnxscript's constant folding alone, trusting the shapes torch.onnx wrote (no ONNX shape inference)."""
    import onnxscript.optimizer

    onnxscript.optimizer.fold_constants_ir(model, onnx_shape_inference=False)


def _ir_remove_unused(model: Any) -> None:
    """onnx_ir's dead-node removal: the least a cleanup can do."""
    import onnx_ir.passes.common as common

    common.RemoveUnusedNodesPass()(model)


def weightless(clean: Callable[[onnx.ModelProto], onnx.ModelProto]) -> Callable[[onnx.ModelProto], onnx.ModelProto]:
    """``clean`` on the graph with its large initializers (> WEIGHT_ELEMENTS) standing in as typed graph
    inputs, the weights put back after. Every proto-based tool serialises the model across the
    Python/C++ boundary (onnxsim twice), and the weights are most of its bytes; folding shape
    computations never needs a weight's values. A prototype, to measure what that would save."""

    def run(model: onnx.ModelProto) -> onnx.ModelProto:
        weights = {t.name: t for t in model.graph.initializer if math.prod(t.dims) > WEIGHT_ELEMENTS}
        light = onnx.ModelProto()
        for field_, value in model.ListFields():
            if field_.name != "graph":
                light.MergeFrom(onnx.ModelProto(**{field_.name: value}))
        for field_, value in model.graph.ListFields():
            if field_.name != "initializer":
                light.graph.MergeFrom(onnx.GraphProto(**{field_.name: value}))
        light.graph.initializer.extend(t for t in model.graph.initializer if t.name not in weights)
        light.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                                 for t in weights.values())
        cleaned = clean(light)
        kept = [i for i in cleaned.graph.input if i.name not in weights]
        del cleaned.graph.input[:]
        cleaned.graph.input.extend(kept)
        used = {i for n in cleaned.graph.node for i in n.input}
        cleaned.graph.initializer.extend(t for name, t in weights.items() if name in used)
        return cleaned

    return run


def fxtrt_cleanup(model: onnx.ModelProto) -> onnx.ModelProto:
    """Whatever fxtrt.backend.cleanup does in this checkout (so a rerun measures the lead's change)."""
    from fxtrt.backend.cleanup import cleanup

    with _quiet():
        return cleanup(model).model


def chain(*steps: Callable[[onnx.ModelProto], onnx.ModelProto]) -> Callable[[onnx.ModelProto], onnx.ModelProto]:
    """The steps one after the other, as one candidate."""
    def clean(model: onnx.ModelProto) -> onnx.ModelProto:
        for step in steps:
            model = step(model)
        return model

    return clean


@dataclass(frozen=True)
class Candidate:
    name: str
    what: str
    clean: Callable[[onnx.ModelProto], onnx.ModelProto]


CANDIDATES: tuple[Candidate, ...] = (
    Candidate("none", "(f) the emitted model as is", lambda m: m),
    Candidate("today", "(a) infer_shapes(data_prop) + GraphSurgeon fold/cleanup/toposort + onnxsim",
              chain(infer_shapes, graphsurgeon, onnxsim_simplify)),
    Candidate("fxtrt", "fxtrt.backend.cleanup.cleanup as the checkout has it (environment: fxtrt_cleanup_sha256)",
              fxtrt_cleanup),
    Candidate("gs+onnxsim", "(a) without infer_shapes", chain(graphsurgeon, onnxsim_simplify)),
    Candidate("infer+onnxsim", "(a) without GraphSurgeon", chain(infer_shapes, onnxsim_simplify)),
    Candidate("onnxsim", "(b) onnxsim alone", onnxsim_simplify),
    Candidate("onnxsim-noinfer", "(b) onnxsim, skip_shape_inference=True",
              lambda m: onnxsim_simplify(m, skip_shape_inference=True)),
    Candidate("onnxsim-weightless", "(b) onnxsim on the graph with its weights as typed inputs (prototype)",
              weightless(onnxsim_simplify)),
    Candidate("onnxslim", "(c) onnxslim alone, defaults", onnxslim_slim),
    Candidate("onnxslim-noinfer", "(c) onnxslim, no_shape_infer=True", lambda m: onnxslim_slim(m, no_shape_infer=True)),
    Candidate("ir-optimize", "(d) onnxscript.optimizer.optimize_ir (fold with shape inference, rewrites, unused, CSE)",
              on_ir(_ir_optimize)),
    Candidate("ir-fold", "(d) onnxscript fold_constants_ir (no ONNX shape inference) + onnx_ir RemoveUnusedNodesPass",
              on_ir(_ir_fold, _ir_remove_unused)),
    Candidate("ir-unused", "(d) onnx_ir RemoveUnusedNodesPass alone", on_ir(_ir_remove_unused)),
    Candidate("gs", "(e) GraphSurgeon fold/cleanup/toposort alone", graphsurgeon),
    Candidate("infer", "infer_shapes(data_prop) alone (what it costs; it removes nothing)", infer_shapes),
)


# --------------------------------------------------------------------------- the emitted graph

class _EmittedGraph(BaseException):
    """Raised in place of fxtrt's cleanup to stop compile() with the graph cleanup would get.

    A BaseException, so that compile()'s wrapper (which turns every Exception into an FxtrtError)
    lets it through unchanged; compile's context managers still clean up behind it.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__("emitted graph captured")
        self.model = model


@dataclass
class Emission:
    """What fxtrt's emit stage made: the opset-18 graph with fxtrt's dim names (the conversion to 17 is
    left to the caller, so it can run before or after a cleanup), and torch.onnx's optimizer time."""

    model: onnx.ModelProto
    optimize_seconds: float
    input_names: tuple[str, ...] | None


@contextlib.contextmanager
def _emission_hooks(optimize: bool, timings: list[float]) -> Iterator[None]:
    """Patch the three seams of fxtrt's lowering this benchmark needs, and nothing else.

    - torch.onnx's ``ONNXProgram.optimize`` (called by the public exporter and by fxtrt's
      translate.py alike): skipped when ``optimize`` is False, timed otherwise;
    - ``fxtrt.backend.emit.convert_opset``: the identity, so the graph stays at opset 18;
    - ``fxtrt.stages.lower.cleanup``: raises :class:`_EmittedGraph` with its input.
    """
    from torch.onnx._internal.exporter._onnx_program import ONNXProgram

    import fxtrt.backend.emit
    import fxtrt.stages.lower

    real_optimize = ONNXProgram.optimize

    def optimize_hook(program: Any) -> None:
        if optimize:
            start = time.perf_counter()
            real_optimize(program)
            timings.append(time.perf_counter() - start)

    def stop(model: onnx.ModelProto, **_: Any) -> None:
        raise _EmittedGraph(model)

    with mock.patch.object(ONNXProgram, "optimize", optimize_hook), \
            mock.patch.object(fxtrt.backend.emit, "convert_opset", lambda model, opset, **_: model), \
            mock.patch.object(fxtrt.stages.lower, "cleanup", stop):
        yield


def emit(spec: ModelSpec, optimize: bool) -> Emission:
    """fxtrt.compile as the fidelity benchmark calls it (benchmarks.exporters.export_fxtrt), stopped
    where cleanup would start."""
    import fxtrt

    model = prepare_model(spec, SEED).module
    example = make_inputs(spec, spec.example_case, SEED)
    export = ExportSpec(input_names=spec.input_names, batch_dims=spec.batch_dims, output_batch_dims=(),
                        opset=OPSET, batch_profile=spec.batch_range or (1, 8, 32), dynamic=spec.dynamic)
    timings: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, _emission_hooks(optimize, timings):
        try:
            fxtrt.compile(model, example, batch=export.batch_profile, batch_dims=list(export.batch_dims),
                          dynamic=export.fxtrt_dynamic(), out_dir=Path(tmp) / "out", opset=OPSET, verify=False)
        except _EmittedGraph as caught:
            return Emission(caught.model, sum(timings), _forward_arg_names(model, len(example)))
    raise RuntimeError(f"{spec.name}: compile finished without reaching cleanup")


def error_text(exc: BaseException, limit: int = 240) -> str:
    """``Type: message`` on one line, without ONNX Runtime's "Load model from <tmp path> failed:"."""
    text = " ".join(str(exc).split())
    text = re.sub(r"Load model from \S+ failed:", "", text).replace("This is an invalid model. ", "")
    return f"{type(exc).__name__}: {text[:limit]}"


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy a candidate may change (several change their input in place)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def to_opset17(model: onnx.ModelProto) -> tuple[onnx.ModelProto | None, float, str]:
    """fxtrt's 18 -> 17 conversion on a copy: (the model or None, seconds, error text)."""
    from fxtrt.backend.opset import convert_opset

    start = time.perf_counter()
    try:
        converted = convert_opset(model, OPSET)
    except Exception as exc:  # noqa: BLE001 - a conversion failure is a result here
        return None, time.perf_counter() - start, error_text(exc)
    return converted, time.perf_counter() - start, ""


# --------------------------------------------------------------------------- what a cleaned graph is

def median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    """``fn()``'s last result and its median wall time over ``repeats`` calls."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


@dataclass
class Cleaned:
    """One candidate's result on one graph: the graph (None if it failed), its median time, the error."""

    model: onnx.ModelProto | None
    seconds: float
    error: str = ""


def clean_all(model: onnx.ModelProto, repeats: int) -> dict[str, Cleaned]:
    """Every candidate on a fresh copy of ``model`` (the copy is not timed), ``repeats`` times,
    interleaved: each repeat runs every candidate once, so a busy phase of a shared machine slows
    all of them, not the few that ran during it."""
    times: dict[str, list[float]] = {c.name: [] for c in CANDIDATES}
    results: dict[str, onnx.ModelProto | None] = {}
    errors: dict[str, str] = {}
    for _ in range(repeats):
        for candidate in CANDIDATES:
            if candidate.name in errors:
                continue
            source = copy_model(model)
            start = time.perf_counter()
            try:
                results[candidate.name] = candidate.clean(source)
            except Exception as exc:  # noqa: BLE001 - a candidate that fails is a result
                results[candidate.name] = None
                errors[candidate.name] = error_text(exc)
            times[candidate.name].append(time.perf_counter() - start)
    return {c.name: Cleaned(results[c.name], statistics.median(times[c.name]), errors.get(c.name, ""))
            for c in CANDIDATES}


def computed_reshapes(model: onnx.ModelProto) -> int:
    """Reshapes whose shape is computed in the graph (not an initializer or a Constant): the shape-op
    chains TensorRT has to evaluate at run time."""
    constant = {t.name for t in model.graph.initializer}
    constant |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return sum(1 for n in model.graph.node if n.op_type == "Reshape" and len(n.input) > 1 and n.input[1] not in constant)


def io_dims(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Each graph input's and output's dims: the name of a symbolic dim, the size of a static one."""
    return {vi.name: [d.dim_param if d.HasField("dim_param") else d.dim_value for d in vi.type.tensor_type.shape.dim]
            for vi in [*model.graph.input, *model.graph.output]}


def dims_verdict(reference: onnx.ModelProto, model: onnx.ModelProto) -> str:
    """``kept`` when every symbolic dim of the emitted graph's inputs and outputs is still symbolic
    under the same name; else what was renamed (fxtrt's restore_dim_names gives an input its name
    back), made static (fatal: check_dynamic_dims refuses it) or lost with its input or output."""
    got = io_dims(model)
    static, renamed, missing = [], [], []
    for name, dims in io_dims(reference).items():
        if name not in got:
            missing.append(name)
            continue
        for axis, (want, have) in enumerate(zip(dims, got[name])):
            if isinstance(want, str) and isinstance(have, int):
                static.append(f"{name}[{axis}]={have}")
            elif isinstance(want, str) and have != want:
                renamed.append(f"{want}->{have}")
    parts = ([f"STATIC {', '.join(static)}"] if static else []) + ([f"missing {', '.join(missing)}"] if missing else [])
    parts += [f"renamed {', '.join(sorted(set(renamed)))}"] if renamed else []
    return "; ".join(parts) or "kept"


def structure_digest(model: onnx.ModelProto) -> str:
    """A name-blind hash of the graph's structure: the multiset of nodes, each as its op, attributes and
    where its inputs come from (the producing op, a graph input, or a constant of some shape). Two
    candidates with one digest left the same graph, whatever they named things and in whatever order
    they sorted it; their latencies then differ only by noise."""
    constants = {t.name: f"const{list(t.dims)}" for t in model.graph.initializer}
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        if n.op_type == "Constant":
            constants[n.output[0]] = "const" + str([list(a.t.dims) for a in n.attribute if a.name == "value"])
    inputs = {vi.name: "input" for vi in model.graph.input}
    nodes = sorted(
        f"{n.op_type}({','.join(constants.get(i) or inputs.get(i) or producer.get(i, '?') for i in n.input)})"
        f"{sorted(str(onnx.helper.get_attribute_value(a)) for a in n.attribute if a.type != onnx.AttributeProto.GRAPH)}"
        for n in model.graph.node if n.op_type != "Constant")
    return hashlib.blake2b("\n".join(nodes).encode(), digest_size=6).hexdigest()


def value_info_coverage(model: onnx.ModelProto) -> float:
    """Share of node outputs with a typed shape in value_info (or as a graph output): what a later
    step that reads shapes (fp16 planning, TensorRT readiness, the opset conversion) finds without
    running shape inference again."""
    outputs = [o for n in model.graph.node for o in n.output if o]
    known = {vi.name for vi in [*model.graph.value_info, *model.graph.output] if vi.type.tensor_type.HasField("shape")}
    return round(sum(o in known for o in outputs) / len(outputs), 3) if outputs else 1.0


# --------------------------------------------------------------------------- running it

def check_cases(spec: ModelSpec) -> tuple[Case, Case]:
    """Two sizes of every dynamic dim: batch 2 with every other dim at its smallest judged size, and
    batch 3 with every other dim at its largest; neither is the export example's."""
    low = Case(CHECK_BATCHES[0], tuple((d.name, spec.sizes_of(d)[0]) for d in spec.dims))
    high = Case(CHECK_BATCHES[1], tuple((d.name, spec.sizes_of(d)[-1]) for d in spec.dims))
    return low, high


def latency_case(spec: ModelSpec) -> Case:
    """Batch 8 with every other dim at the export example's size (BERT: sequence 64; yolov8n: 480 x 480)."""
    return Case(LATENCY_BATCH, tuple((d.name, d.opt) for d in spec.dims))


@dataclass
class Workload:
    """One model's inputs for every case, and the uncleaned graph's outputs on the checked ones."""

    arrays: dict[str, list[np.ndarray]]
    checked: tuple[str, ...]
    latency: str
    input_names: tuple[str, ...] | None
    reference: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def feed(self, session: Any, key: str) -> dict[str, np.ndarray]:
        return build_feed(session, self.arrays[key], self.input_names)


def workload(spec: ModelSpec, emission: Emission, path: Path) -> Workload:
    """The inputs, and the reference: the emitted opset-18 graph run by ONNX Runtime, before any cleanup."""
    cases = (*check_cases(spec), latency_case(spec))
    arrays = {c.key: [t.numpy() for t in make_inputs(spec, c, SEED)] for c in cases}
    work = Workload(arrays, tuple(c.key for c in cases[:2]), cases[2].key, emission.input_names)
    onnx.save(emission.model, str(path))
    session = make_session(path)
    work.reference = {key: run(session, work.feed(session, key)) for key in work.checked}
    return work


def numerics(session: Any, work: Workload) -> tuple[float | None, bool | None, str]:
    """(max |cleaned - uncleaned| over every output and checked case, whether fxtrt's rule holds, error)."""
    from fxtrt.compare import compare_arrays

    worst, ok = 0.0, True
    try:
        for key in work.checked:
            got = run(session, work.feed(session, key))
            if len(got) != len(work.reference[key]):
                return None, False, f"{len(got)} outputs, expected {len(work.reference[key])}"
            for ref, out in zip(work.reference[key], got):
                c = compare_arrays(ref, out, ATOL, RTOL, exact_integers=True)
                worst, ok = max(worst, c.max_abs), ok and c.passed
    except Exception as exc:  # noqa: BLE001 - a graph ONNX Runtime cannot run is a result
        return None, False, error_text(exc)
    return worst, ok, ""


def latency_session(path: Path, threads: int) -> Any:
    """An ONNX Runtime session for numerics and the latency rounds, with ``threads`` intra-op threads
    and no spinning (a dozen sessions are alive at once; an idle one's threads would otherwise spin
    after each run and take the cores from the next candidate's). One thread is the default: the
    graphs are compared, not the machine, and on a shared 2-core machine two-thread runs of one
    graph differed by up to 25% between sessions, one-thread runs by about 2%."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def interleaved_latency(sessions: dict[str, Any], baseline: str, work: Workload, rounds: int,
                        warmup: int = 2) -> dict[str, dict[str, float]]:
    """Per session at batch 8: the median ms, the fastest, and the median over rounds of its time
    over ``baseline``'s in the same round (the issue's "median ratio"). Each round runs every
    session once, starting one further along each time, so a busy phase of a shared machine falls
    on all of them alike and the per-round ratio cancels most of it."""
    feeds = {name: work.feed(s, work.latency) for name, s in sessions.items()}
    for name, session in sessions.items():
        for _ in range(warmup):
            session.run(None, feeds[name])
    names = list(sessions)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            sessions[name].run(None, feeds[name])
            times[name].append(time.perf_counter() - start)
    base = times.get(baseline)
    return {n: {"latency_ms": round(statistics.median(t) * 1e3, 3), "latency_min_ms": round(min(t) * 1e3, 3),
                "latency_vs_today": round(statistics.median(a / b for a, b in zip(t, base)), 3) if base else None}
            for n, t in times.items()}


def candidate_row(name: str, at18: Cleaned, at17: Cleaned | None) -> tuple[dict[str, Any], onnx.ModelProto | None]:
    """One candidate's row, in both orders. fxtrt's order (convert to 17, then clean: ``at17``) gives
    the row's figures when the emitted graph converts; otherwise (optimizer off) the other order
    does: clean at 18, then convert. Returns the row and the final opset-17 graph (None if the
    candidate or the conversion failed)."""
    final18, convert_s, convert_error = to_opset17(at18.model) if at18.model is not None else (None, 0.0, "")
    row: dict[str, Any] = {
        "candidate": name, "at18_seconds": round(at18.seconds, 4), "at18_error": at18.error,
        "at18_convert_seconds": round(convert_s, 4), "at18_convert_error": convert_error,
        "at18_nodes": len(final18.graph.node) if final18 is not None else None,
    }
    if at17 is not None:
        row.update(order="convert, then clean", seconds=round(at17.seconds, 4), error=at17.error)
        return row, at17.model
    row.update(order="clean, then convert", seconds=row["at18_seconds"], error=at18.error or convert_error)
    return row, final18


def describe(row: dict[str, Any], final: onnx.ModelProto, emission: Emission, path: Path) -> None:
    """The graph's figures into ``row``: counts (benchmarks.onnx_stats), dims, value_info, opset."""
    onnx.save(final, str(path))
    stats = graph_stats(path)
    row.update(nodes=stats.nodes, shape_ops=stats.shape_ops, computed_reshapes=computed_reshapes(final),
               file_mb=round(stats.file_bytes / 2**20, 2), value_info=value_info_coverage(final),
               dims=dims_verdict(emission.model, final), graph=structure_digest(final), op_counts=stats.op_counts,
               opset=next((o.version for o in final.opset_import if o.domain in ("", "ai.onnx")), None))


def conversion_figures(model: onnx.ModelProto, repeats: int) -> dict[str, Any]:
    """Where fxtrt's 18 -> 17 conversion spends its time: its own shape inference (for Split sizes
    only) and onnx.checker, each timed alone on the emitted graph; and the proto -> onnx_ir -> proto
    round trip every IR-based candidate pays here."""
    import onnx_ir as ir

    _, infer_s = median_seconds(lambda: onnx.shape_inference.infer_shapes(model), repeats)
    _, check_s = median_seconds(lambda: onnx.checker.check_model(model), repeats)
    _, roundtrip_s = median_seconds(lambda: ir.to_proto(ir.from_proto(model)), repeats)
    splits = sum(1 for n in model.graph.node if n.op_type == "Split")
    return {"convert_infer_shapes_seconds": round(infer_s, 4), "convert_checker_seconds": round(check_s, 4),
            "ir_roundtrip_seconds": round(roundtrip_s, 4), "split_nodes": splits}


def onnxsim_profile(model: onnx.ModelProto) -> dict[str, float]:
    """onnxsim's own trace: of its wall time, how much is simplification and how much is its internal
    shape inference (the rest is moving the model across the Python/C++ boundary). Shows whether an
    infer_shapes before onnxsim repeats work onnxsim does anyway."""
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        start = time.perf_counter()
        onnxsim_simplify(copy_model(model), profile=str(trace))  # its summary goes to fd 1: quietened
        wall = time.perf_counter() - start
        events = [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("ph") == "X"]
    total = {name: sum(e["dur"] for e in events if e["name"] == name) / 1e6 for name in ("Simplify", "InferShapes")}
    return {"wall_seconds": round(wall, 4), "simplify_seconds": round(total["Simplify"], 4),
            "infer_shapes_seconds": round(total["InferShapes"], 4)}


def measure(spec: ModelSpec, optimize: bool, repeats: int, rounds: int, threads: int) -> dict[str, Any]:
    """Every candidate on one model's emitted graph, with torch.onnx's optimizer on or off."""
    start = time.perf_counter()
    emission = emit(spec, optimize)
    base17, convert_s, convert_error = to_opset17(copy_model(emission.model))
    result: dict[str, Any] = {
        "optimize_seconds": round(emission.optimize_seconds, 4), "convert_seconds": round(convert_s, 4),
        "convert_error": convert_error, "emitted_nodes": len(emission.model.graph.node),
        "emitted_value_info": value_info_coverage(emission.model), "emitted_dims": io_dims(emission.model),
        **conversion_figures(emission.model, repeats),
        "onnxsim_profile": onnxsim_profile(base17 if base17 is not None else emission.model),
    }
    with tempfile.TemporaryDirectory(prefix="cleanup-compare-") as tmp:
        work = workload(spec, emission, Path(tmp) / "reference.onnx")
        at18 = clean_all(emission.model, repeats)
        at17 = clean_all(base17, repeats) if base17 is not None else {}
        rows, sessions = {}, {}  # one session per distinct graph: candidates that left the same graph share it
        for candidate in CANDIDATES:
            row, final = candidate_row(candidate.name, at18.pop(candidate.name), at17.pop(candidate.name, None))
            if final is not None:
                path = Path(tmp) / f"{candidate.name}.onnx"
                describe(row, final, emission, path)
                try:
                    session = latency_session(path, threads)  # its own, for numerics: one digest may hide other values
                    row["max_abs"], row["numerics_ok"], row["run_error"] = numerics(session, work)
                    if row["numerics_ok"]:
                        sessions.setdefault(row["graph"], session)
                except Exception as exc:  # noqa: BLE001 - a graph ONNX Runtime refuses is a result
                    row.update(max_abs=None, numerics_ok=False, run_error=error_text(exc))
            rows[candidate.name] = row
            log.info("%s optimize=%s %-18s %.3fs %s", spec.name, optimize, candidate.name, row["seconds"],
                     row.get("error") or row.get("dims"))
        baseline = (rows[BASELINE] if rows[BASELINE].get("numerics_ok") else rows["none"]).get("graph", "")
        latency = interleaved_latency(sessions, baseline, work, rounds)
    for row in rows.values():
        row.update(latency.get(row.get("graph", ""), {}))
    result.update(rows=rows, latency_case=work.latency, latency_graphs=len(sessions),
                  seconds=round(time.perf_counter() - start, 1))
    return result


def environment() -> dict[str, Any]:
    """What the figures depend on: the date, the machine's CPUs and load, the packages' versions, and
    which fxtrt cleanup the ``fxtrt`` candidate ran (a hash of its source file)."""
    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    import fxtrt.backend.cleanup

    source = Path(fxtrt.backend.cleanup.__file__).read_bytes()
    return {"date": dt.date.today().isoformat(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
            "versions": {p: version(p) for p in _VERSIONED},
            "fxtrt_cleanup_sha256": hashlib.sha256(source).hexdigest()[:16],
            "candidates": {c.name: c.what for c in CANDIDATES}, "atol": ATOL, "rtol": RTOL}


def select_models(patterns: str | None) -> tuple[ModelSpec, ...]:
    """The fidelity benchmark's quick set, then resnet50, the 4-layer BERT and yolov8n; ``patterns``
    (comma-separated globs or substrings, matched as benchmarks.fidelity's --models) narrows them."""
    by_name = {s.name: s for s in all_specs()}
    specs = (*select_specs(quick=True), by_name[EXTRA_MODELS[0]], BERT4, by_name[EXTRA_MODELS[1]])
    wanted = [p.strip() for p in (patterns or "").split(",") if p.strip()]
    return tuple(s for s in specs if not wanted or any(_matches(s.name, p) for p in wanted))


# --------------------------------------------------------------------------- the report

def _fmt(value: Any, digits: int = 3) -> str:
    """A figure for a table: ``–`` for none, small floats in significant digits, others rounded."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 and value else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)


def summary_rows(results: dict[str, Any], optimize: bool) -> list[str]:
    """One line per candidate over every model: total time and its ratio to today's, in how many
    models it leaves no more nodes and shape ops than today (and the same graph), keeps every dim,
    matches, and its median latency ratio to today."""
    key = f"optimize={optimize}"
    runs = [m[key] for m in results["models"].values() if key in m and "rows" in m[key]]
    lines = ["| candidate | total s | × today | failed | nodes ≤ today | shape ops ≤ today | same graph as today "
             "| dims kept | numerics ok | latency × today (median, worst) |", "|---|---|---|---|---|---|---|---|---|---|"]
    today = sum(r["rows"][BASELINE]["seconds"] for r in runs)
    for c in CANDIDATES:
        rows = [r["rows"][c.name] for r in runs]
        ok = [(row, r["rows"][BASELINE]) for row, r in zip(rows, runs) if "nodes" in row and "nodes" in r["rows"][BASELINE]]
        lat = [row["latency_vs_today"] for row in rows if row.get("latency_vs_today")]
        total = sum(row["seconds"] for row in rows)
        lines.append(" | ".join([
            f"| {c.name}", _fmt(total, 2), _fmt(total / today if today else None, 2),
            str(sum(1 for row in rows if "nodes" not in row or not row.get("numerics_ok"))),
            f"{sum(row['nodes'] <= t['nodes'] for row, t in ok)}/{len(runs)}",
            f"{sum(row['shape_ops'] <= t['shape_ops'] for row, t in ok)}/{len(runs)}",
            f"{sum(row.get('graph') == t.get('graph') for row, t in ok)}/{len(runs)}",
            f"{sum(row.get('dims') == 'kept' for row in rows)}/{len(runs)}",
            f"{sum(bool(row.get('numerics_ok')) for row in rows)}/{len(runs)}",
            f"{_fmt(statistics.median(lat), 3)}, {_fmt(max(lat), 3)} |" if lat else "– |",
        ]))
    return lines


def model_table(name: str, model: dict[str, Any]) -> list[str]:
    """Per model: every candidate's figures with the optimizer on, then off."""
    lines = [f"### {name}", ""]
    for key, run_ in model.items():
        if "rows" not in run_:
            lines += [f"{key}: {run_.get('error', 'not run')}", ""]
            continue
        lines += [f"{key}: emitted {run_['emitted_nodes']} nodes; optimizer {_fmt(run_['optimize_seconds'])} s; "
                  f"18→17 {_fmt(run_['convert_seconds'])} s {run_['convert_error'] or 'ok'}; latency at {case_text(run_['latency_case'])}",
                  "", "| candidate | order | s | nodes | shape ops | computed Reshape | value_info | dims | graph | max abs Δ | "
                  "latency ms | × today | at 18: s, then 18→17 |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        today = run_["rows"][BASELINE]
        for c in CANDIDATES:
            r = run_["rows"][c.name]
            at18 = f"{_fmt(r['at18_seconds'])}, {r['at18_convert_error'] or _fmt(r['at18_convert_seconds'])}"
            if r.get("error") or "nodes" not in r:
                lines.append(f"| {c.name} | {r['order']} | {_fmt(r['seconds'])} | FAILED: {r.get('error', '')} |"
                             f" | | | | | | | | {at18} |")
                continue
            delta = r.get("run_error") or _fmt(r.get("max_abs"), 2) + ("" if r.get("numerics_ok") else " FAIL")
            lines.append(" | ".join([f"| {c.name}", r["order"], _fmt(r["seconds"]), str(r["nodes"]), str(r["shape_ops"]),
                                     str(r["computed_reshapes"]), _fmt(r["value_info"]), r["dims"],
                                     "= today" if r["graph"] == today.get("graph") else r["graph"], delta,
                                     _fmt(r.get("latency_ms"), 4), _fmt(r.get("latency_vs_today")), at18 + " |"]))
        lines.append("")
    return lines


def write_report(results: dict[str, Any], out: Path) -> None:
    """cleanup.json (everything) and tables.md (the summary, then one table per model)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "cleanup.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    env = results["environment"]
    lines = ["# Cleanup at its cost (issue 19, part 2): generated tables", "",
             f"`python -m benchmarks.cleanup_compare`, {env['date']}, {env['cpus']} CPUs, load at start "
             f"{', '.join(f'{x:.1f}' for x in env['load_average'])}; cleanup times are medians of {env.get('repeats')} "
             f"interleaved runs; latency: {env.get('rounds')} interleaved rounds, {env.get('latency_threads')} "
             "ONNX Runtime thread(s), × today = median over rounds of the time over today's graph's in that round; "
             + ", ".join(f"{k} {v}" for k, v in env["versions"].items()), "",
             "Candidates:", "", *[f"- `{n}`: {w}" for n, w in env["candidates"].items()], ""]
    for optimize in (True, False):
        lines += [f"## Summary, torch.onnx optimize={optimize}", "", *summary_rows(results, optimize), ""]
    lines += ["## Per model", ""]
    for name, model in results["models"].items():
        lines += model_table(name, model)
    (out / "tables.md").write_text("\n".join(lines) + "\n")


PROGRESS = (BASELINE, "onnxsim", "onnxsim-weightless", "onnxslim", "ir-fold")


def progress(run_: dict[str, Any]) -> str:
    """One model's line while the run goes: a few candidates' seconds, nodes and shape ops, or the error."""
    if "error" in run_:
        return run_["error"]
    rows = [(n, run_["rows"][n]) for n in PROGRESS]
    return ", ".join(f"{n} {r['seconds']:.2f}s {r.get('nodes', 'FAILED')}/{r.get('shape_ops', '')}" for n, r in rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cleanup_compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated globs or substrings of the model names")
    parser.add_argument("--out", type=Path, help="output directory (default benchmarks/results/<date>-cleanup)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each cleanup (the median is kept)")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved ONNX Runtime rounds for latency (>= 15)")
    parser.add_argument("--latency-threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    parser.add_argument("--list", action="store_true", help="list the models and exit")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Each model with the optimizer on, then off; the report is rewritten after each, so an
    interrupted run keeps what it finished."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO if args.verbose else logging.WARNING)  # onnxscript's INFO lines are not ours
    logging.getLogger("fxtrt").setLevel(logging.ERROR)  # compile's own warnings (e.g. verify=False) are not ours
    specs = select_models(args.models)
    if args.list:
        print("\n".join(s.name for s in specs))
        return 0
    out = args.out or RESULTS_ROOT / f"{dt.date.today().isoformat()}-cleanup"
    results: dict[str, Any] = {"environment": {**environment(), "latency_threads": args.latency_threads,
                                               "repeats": args.repeats, "rounds": args.rounds}, "models": {}}
    for i, spec in enumerate(specs, 1):
        for optimize in (True, False):
            try:
                run_ = measure(spec, optimize, args.repeats, args.rounds, args.latency_threads)
            except Exception as exc:  # noqa: BLE001 - a model fxtrt refuses is recorded, the others still run
                run_ = {"error": error_text(exc)}
            results["models"].setdefault(spec.name, {})[f"optimize={optimize}"] = run_
            print(f"[{i}/{len(specs)}] {spec.name} optimize={optimize}: {progress(run_)}", flush=True)
            write_report(results, out)
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
