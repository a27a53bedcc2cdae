"""What runs inside a zoo job's child process: prepare a model, run one cell, or time the exports.

- ``prepare``: plan the model's variants (:func:`benchmarks.zoo.specs.plan`) and run the shared
  eager reference (:func:`benchmarks.worker.run_reference`) for each in turn, until one builds,
  runs at every judged size and returns the same number of tensors at every batch size; writes
  ``prepare.json``.
- ``cell``: :func:`benchmarks.worker.run_cell` for one exporter, on the prepared job key.
- ``latency``: ONNX Runtime latency of every exported file at batch 1, interleaved: each file once
  per round, the order reversed every other round, so load from elsewhere hits them alike.
"""
from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.ort_runner import build_feed, make_session
from benchmarks.worker import (REFERENCE_ARRAYS, REFERENCE_META, JobSettings, _error_fields, _error_text,
                               _redirect_output, run_cell, run_reference, write_json_atomic)
from benchmarks.zoo.isolate import die_with_parent
from benchmarks.zoo.specs import plan, spec_for
from benchmarks.zoo.variants import job_key

PREPARED = "prepare.json"
LATENCY = "latency.json"
MIN_ROUNDS = 3
LATENCY_BUDGET_S = 10.0
log = logging.getLogger(__name__)


def _setup(threads: int, log_path: Path) -> None:
    die_with_parent()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _redirect_output(log_path)
    torch.set_num_threads(threads)


def _unbatched(ref_dir: Path) -> str | None:
    """Why eager's outputs cannot be judged with a dynamic batch, or None if they can."""
    with np.load(ref_dir / REFERENCE_ARRAYS) as arrays:
        counts: dict[str, int] = {}
        for name in arrays.files:
            if name.startswith("out_"):
                case = name[4:].rsplit("_", 1)[0]
                counts[case] = counts.get(case, 0) + 1
    if len(set(counts.values())) > 1:
        return (f"eager returns a different number of tensors at different batch sizes ({counts}): "
                "a list per sample, which no batched export can match")
    return None


def _example_inputs(ref_dir: Path, example: str) -> list[np.ndarray]:
    """The export example's inputs, in order, from the reference arrays."""
    prefix = f"in_{example}_"
    with np.load(ref_dir / REFERENCE_ARRAYS) as arrays:
        names = sorted((n for n in arrays.files if n.startswith(prefix)), key=lambda n: int(n[len(prefix):]))
        return [arrays[n] for n in names]


def prepare(model_id: str, settings: JobSettings, ref_dir: Path, threads: int) -> None:
    """Find the first variant of ``model_id`` whose eager reference can be judged; write ``prepare.json``."""
    _setup(threads, ref_dir / "prepare.log")
    out: dict[str, Any] = {"model": model_id, "ok": False, "family": "", "notes": []}
    try:
        found = plan(model_id)
    except Exception as exc:  # noqa: BLE001 - an unplannable model is a result
        log.exception("planning %s failed", model_id)
        out.update(notes=[f"plan: {_error_text(exc)}"], **_error_fields(exc))
        write_json_atomic(ref_dir / PREPARED, out)
        return
    out.update(family=found.family, notes=list(found.notes))
    for variant in found.variants:
        key = job_key(model_id, variant)
        run_reference(key, settings, ref_dir, resolve=spec_for)
        meta = json.loads((ref_dir / REFERENCE_META).read_text())
        problem = meta.get("error", "failed") if not meta.get("ok") else _unbatched(ref_dir)
        if problem is None:
            out.update(ok=True, key=key, dims=variant.dims, variant=variant.text(),
                       input=",".join("x".join(map(str, a.shape)) for a in _example_inputs(ref_dir, meta["example"])),
                       build_s=meta.get("build_s"))
            break
        out["notes"].append(f"{variant.text()}: {problem}")
        if meta.get("ok"):  # eager ran, but its outputs are per sample
            out.update(error_type="UnbatchedOutputs", error_line=problem[:300], error_frame="prepare")
        else:
            out.update({k: meta[k] for k in ("error_type", "error_line", "error_frame") if k in meta})
    if not found.variants:  # the plan itself says why (a main input the zoo does not make, no shrink level)
        out.update(error_type="NoVariant", error_line=(out["notes"] or [""])[0][:300], error_frame="plan")
    write_json_atomic(ref_dir / PREPARED, out)


def cell(key: str, exporter: str, settings: JobSettings, ref_dir: Path, cell_dir: Path, threads: int) -> None:
    _setup(threads, cell_dir / "child.log")
    run_cell(key, exporter, settings, ref_dir, cell_dir, resolve=spec_for)


def latency(exports: dict[str, tuple[str, list[str] | None]], ref_dir: Path, out_path: Path,
            rounds: int, threads: int) -> None:
    """Median and minimum ms per exporter at batch 1 (the export example): one warm-up, then up to
    ``rounds`` interleaved rounds, stopping after ``LATENCY_BUDGET_S`` once ``MIN_ROUNDS`` are done."""
    _setup(threads, out_path.with_suffix(".log"))
    inputs = _example_inputs(ref_dir, json.loads((ref_dir / REFERENCE_META).read_text())["example"])
    sessions, feeds = {}, {}
    for name, (path, input_names) in exports.items():
        try:
            sessions[name] = make_session(Path(path), threads)
            feeds[name] = build_feed(sessions[name], inputs, input_names)
            sessions[name].run(None, feeds[name])
        except Exception:  # noqa: BLE001 - an export that does not run has no latency
            log.exception("latency: %s does not run", name)
            sessions.pop(name, None)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    order, began, done = list(sessions), time.perf_counter(), 0
    while done < rounds and (done < MIN_ROUNDS or time.perf_counter() - began < LATENCY_BUDGET_S):
        for name in order if done % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            sessions[name].run(None, feeds[name])
            times[name].append(time.perf_counter() - start)
        done += 1
    write_json_atomic(out_path, {
        "rounds": done, "threads": threads,
        "ms": {name: statistics.median(t) * 1e3 for name, t in times.items() if t},
        "min_ms": {name: min(t) * 1e3 for name, t in times.items() if t},
    })
