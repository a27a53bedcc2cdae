"""Time every exporter's ONNX file of one model in one process, interleaved, and compare them.

Runs in a child of ``python -m benchmarks.latency``, after the fidelity harness has exported the
model with each exporter and saved eager's inputs and outputs (``benchmarks.worker``). Every
session is opened with fxtrt's :class:`~fxtrt.backend.onnxruntime.SessionLoader` (the CPU
provider, one intra- and inter-op thread per CPU). At each batch size, each round runs every
session once (or, for models faster than ``min_slice_ms``, the same number of times back to back
for every contestant), in an order that rotates from round to round, after ``warmup`` runs::

    for round in range(rounds):
        for batch in batches:
            for contestant in rotate(contestants, round):
                time n back-to-back session.run calls     # n = 1 unless the model is that fast

The figure per model and batch is the median of the per-round ratios ``fxtrt / best``, where
"best" is the baseline with the lowest median latency among those whose file loaded, ran at that
batch and matched eager there (``benchmarks.outcomes.check_output``, the fidelity rule). A wrong
baseline is never "best". The spread of the per-round ratios (25th to 75th percentile) is the
noise figure: fxtrt counts as slower beyond noise when even the 25th percentile is above 1.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.model_spec import Case
from benchmarks.ort_runner import ServedSession, build_feed
from benchmarks.outcomes import Tolerance, check_output
from benchmarks.worker import CELL_RESULT, REFERENCE_ARRAYS, REFERENCE_META, write_json_atomic

log = logging.getLogger(__name__)

MEASURE_RESULT = "latency.json"
SUBJECT = "fxtrt"
TUNED = "fxtrt+tune"  # fxtrt's file through fxtrt.backend.onnxruntime.tune (issue 19, item 4)


@dataclass(frozen=True)
class TimingSettings:
    rounds: int = 15
    batches: tuple[int, ...] = (1, 8)
    warmup: int = 3
    min_slice_ms: float = 10.0  # 0: each session runs exactly once per round
    tuned: bool = False
    dump_optimized: bool = True
    tolerance: Tolerance = field(default_factory=Tolerance)


@dataclass
class Contestant:
    """One ONNX file under test: its session and, per batch, the feed and whether it matched eager."""

    name: str
    path: Path
    input_names: tuple[str, ...] | None
    session: Any = None
    error: str = ""
    feeds: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    status: dict[int, str] = field(default_factory=dict)  # batch -> "ok", "wrong: ...", "raised: ..."
    times: dict[int, list[float]] = field(default_factory=dict)  # per round: seconds per run
    rewrites: dict[str, int] = field(default_factory=dict)  # fxtrt+tune: sites per rewrite


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def latency_case(cases: Sequence[Case], batch: int) -> Case | None:
    """The judged case timed at ``batch``: the one with the largest dynamic sizes (as the fidelity run)."""
    at_batch = [c for c in cases if c.batch == batch]
    return max(at_batch, key=lambda c: [v for _, v in c.sizes]) if at_batch else None


def _contestants(model_dir: Path, exporters: Sequence[str], tuned: bool) -> list[Contestant]:
    """Every exporter whose export wrote a file, plus fxtrt's file tuned for ONNX Runtime if asked."""
    out = []
    for name in exporters:
        result = model_dir / name / CELL_RESULT
        row = json.loads(result.read_text()) if result.exists() else {}
        if not row.get("onnx_path") or not Path(row["onnx_path"]).exists():
            continue
        names = tuple(row["onnx_input_names"]) if row.get("onnx_input_names") else None
        out.append(Contestant(name, Path(row.get("served_by") or row["onnx_path"]), names))
        if tuned and name == SUBJECT and not out[-1].path.is_dir():  # a bucket set has no one file to tune
            out.append(_tuned(out[-1]))
    return out


def _tuned(fxtrt: Contestant) -> Contestant:
    import onnx

    from fxtrt.backend.onnxruntime.tune import tune_for_onnxruntime

    path = fxtrt.path.with_name("model.tuned.onnx")
    contestant = Contestant(TUNED, path, fxtrt.input_names)
    try:
        model = onnx.load(str(fxtrt.path))
        tuned = tune_for_onnxruntime(model)
        onnx.save(tuned.model, str(path))
        contestant.rewrites = tuned.rewrites
    except Exception as exc:  # noqa: BLE001 - recorded; the contestant is then left out
        contestant.error = f"tune failed: {_error(exc)}"
    return contestant


def _open(contestants: Sequence[Contestant]) -> None:
    from fxtrt.backend.onnxruntime import SessionLoader

    for c in contestants:
        if c.error:
            continue
        try:
            c.session = ServedSession(c.path) if c.path.is_dir() else SessionLoader(c.path, quiet=True)()
        except Exception as exc:  # noqa: BLE001 - ORT rejected the file
            c.error = f"ORT could not load it: {_error(exc)}"


def _check(c: Contestant, batch: int, inputs: list[np.ndarray], want: list[np.ndarray], tol: Tolerance) -> None:
    """Build the feed at ``batch``, run once, and record whether the outputs match eager."""
    try:
        c.feeds[batch] = build_feed(c.session, inputs, c.input_names)
        got = [np.asarray(o) for o in c.session.run(None, c.feeds[batch])]
    except Exception as exc:  # noqa: BLE001 - the file raises at this size
        c.status[batch] = f"raised: {_error(exc)}"
        return
    if len(got) != len(want):
        c.status[batch] = f"wrong: {len(got)} outputs, eager has {len(want)}"
        return
    bad = [f"output {j}: {r.reason}" for j, r in enumerate(check_output(g, w, tol) for g, w in zip(got, want)) if not r.ok]
    c.status[batch] = f"wrong: {'; '.join(bad)}" if bad else "ok"


def _interleave(contestants: Sequence[Contestant], batches: Sequence[int], settings: TimingSettings) -> dict[int, int]:
    """Warm up, then per round and batch give each session one slice, the order rotating by round.

    A slice is ``n`` back-to-back runs, the same ``n`` for every contestant at a batch, chosen at
    warm-up so that the slowest contestant's slice lasts ``min_slice_ms`` (1 for models slower
    than that): a single sub-millisecond run is mostly scheduler noise on a shared machine.
    Returns ``n`` per batch.
    """
    runs: dict[int, int] = {}
    for b in batches:
        running = [c for c in contestants if c.status.get(b, "").startswith(("ok", "wrong"))]
        slowest = 0.0
        for c in running:
            c.times[b] = []
            for _ in range(max(settings.warmup, 1)):
                t0 = time.perf_counter()
                c.session.run(None, c.feeds[b])
                slowest = max(slowest, time.perf_counter() - t0)
        runs[b] = max(1, int(settings.min_slice_ms / 1e3 / slowest)) if slowest > 0 else 1
    for r in range(settings.rounds):
        for b in batches:
            running = [c for c in contestants if b in c.times]
            k = r % len(running) if running else 0
            for c in running[k:] + running[:k]:
                t0 = time.perf_counter()
                for _ in range(runs[b]):
                    c.session.run(None, c.feeds[b])
                c.times[b].append((time.perf_counter() - t0) / runs[b])
    return runs


def _optimized_ops(c: Contestant, out: Path) -> dict[str, int] | str:
    """Op counts of the graph ONNX Runtime runs after its fusions: the timed session's own options,
    with the optimized graph written out."""
    import onnx
    import onnxruntime as ort

    if c.path.is_dir():
        return "a bucket set: one graph per bucket"
    options = c.session.get_session_options()
    options.optimized_model_filepath = str(out)
    try:
        ort.InferenceSession(str(c.path), options, providers=c.session.get_providers())
        counts = Counter(n.op_type for n in onnx.load(str(out), load_external_data=False).graph.node)
    except Exception as exc:  # noqa: BLE001 - a note, not a result
        return _error(exc)
    finally:
        for f in out.parent.glob(out.name + "*"):
            f.unlink()
    return dict(counts.most_common())


def measure_model(model_dir: Path, exporters: Sequence[str], settings: TimingSettings) -> None:
    """Open, check and time every exporter's file of the model in ``model_dir``; write ``latency.json``."""
    result: dict[str, Any] = {"ok": False, "load_start": os.getloadavg()}
    try:
        meta = json.loads((model_dir / "reference" / REFERENCE_META).read_text())
        arrays = np.load(model_dir / "reference" / REFERENCE_ARRAYS)
        contestants = _contestants(model_dir, exporters, settings.tuned)
        _open(contestants)
        cases = [Case(int(k.split(",")[0]), tuple((p.split("=")[0], int(p.split("=")[1])) for p in k.split(",")[1:]))
                 for k in meta["cases"]]
        timed: dict[int, str] = {}
        for b in settings.batches:
            case = latency_case(cases, b)
            if case is None:
                continue
            timed[b] = case.key
            n_in = len([k for k in arrays.files if k.startswith(f"in_{case.key}_")])
            inputs = [arrays[f"in_{case.key}_{i}"] for i in range(n_in)]
            want = [arrays[f"out_{case.key}_{j}"] for j in range(meta["n_outputs"])]
            for c in contestants:
                if c.session is not None:
                    _check(c, b, inputs, want, settings.tolerance)
        runs = _interleave(contestants, list(timed), settings)
        result.update(ok=True, cases=timed, runs_per_slice={str(b): n for b, n in runs.items()}, contestants=[_contestant_record(c, model_dir, settings) for c in contestants])
    except Exception as exc:  # noqa: BLE001 - the harness failed on this model; recorded, not raised
        log.exception("latency measurement failed")
        result["error"] = _error(exc) + " | " + traceback.format_exc(limit=3).replace("\n", " ")
    result["load_end"] = os.getloadavg()
    write_json_atomic(model_dir / MEASURE_RESULT, result)


def _contestant_record(c: Contestant, model_dir: Path, settings: TimingSettings) -> dict[str, Any]:
    from benchmarks.onnx_stats import graph_stats

    record: dict[str, Any] = {"name": c.name, "error": c.error, "status": {str(b): s for b, s in c.status.items()},
                              "times_s": {str(b): t for b, t in c.times.items()}, "rewrites": c.rewrites}
    if not c.error:
        record["op_counts"] = graph_stats(c.path).op_counts
        if settings.dump_optimized:
            record["ort_op_counts"] = _optimized_ops(c, model_dir / f"ort_optimized_{c.name}.onnx")
    return record


def _quantile(values: Sequence[float], q: float) -> float:
    return float(np.quantile(np.asarray(values, dtype=float), q))


def summarize(measured: dict[str, Any], subjects: Sequence[str] = (SUBJECT, TUNED)) -> list[dict[str, Any]]:
    """One row per timed batch: each contestant's median, the best correct baseline, and the
    per-round ratio of each subject (fxtrt, fxtrt+tune) to it (median and 25th/75th percentiles)."""
    if not measured.get("ok"):
        return []
    by_name = {c["name"]: c for c in measured["contestants"]}
    rows = []
    for b, key in measured["cases"].items():
        times = {n: c["times_s"].get(b) for n, c in by_name.items() if c["times_s"].get(b)}
        medians = {n: statistics.median(t) * 1e3 for n, t in times.items()}
        status = {n: c["status"].get(b, c["error"] or "not run") for n, c in by_name.items()}
        eligible = [n for n in medians if n not in subjects and status[n] == "ok"]
        best = min(eligible, key=medians.__getitem__) if eligible else None
        row: dict[str, Any] = {"batch": int(b), "case": key, "median_ms": medians, "status": status, "best": best,
                               "excluded": {n: s for n, s in status.items() if n not in subjects and s != "ok"}}
        for subject in subjects:
            if best is None or subject not in times:
                continue
            ratios = [s / t for s, t in zip(times[subject], times[best])]
            row[subject] = {"ratio": statistics.median(ratios), "p25": _quantile(ratios, 0.25),
                            "p75": _quantile(ratios, 0.75), "status": status[subject]}
        rows.append(row)
    return rows
