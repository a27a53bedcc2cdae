"""One model's job: prepare it, run one cell per exporter, then time the exports interleaved.

The job is a generator of events, so the driver commits each cell the moment it finishes (on Ray,
through a streaming generator task): ``{"kind": "cell", "row": ...}`` once per exporter, then
``{"kind": "latency", "model": ..., "ms": {exporter: ms}}`` if any export ran. Every step runs in a
child process of its own (:mod:`.isolate`); the job itself only reads the files they leave.

Outcomes besides the fidelity benchmark's (PASS, SILENT, LOUD, REFUSED, CRASH, ERROR):

    TIMEOUT       the cell's child was still running at the deadline, and was killed
    OOM           the cell's child went above the memory cap (or the kernel's OOM killer ended it)
    BUILD_FAILED  no exporter ran: the model could not be built, run in eager at the judged sizes,
                  or judged with a dynamic batch; the detail says why, for each variant tried

A child that timed out after a wrong answer at some size stays SILENT: the wrong answer is real.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from benchmarks.outcomes import Outcome
from benchmarks.runner import ChildExit as RunnerExit
from benchmarks.runner import finish_row
from benchmarks.worker import CELL_RESULT, JobSettings
from benchmarks.zoo import child
from benchmarks.zoo.isolate import ZOOS_ENV, ChildExit, Limits, context, run_child

TIMEOUT, OOM, BUILD_FAILED = "TIMEOUT", "OOM", "BUILD_FAILED"
OUTCOMES = (*(o.value for o in Outcome), TIMEOUT, OOM, BUILD_FAILED)
TIMED = (Outcome.PASS.value, Outcome.SILENT.value)  # exports that ran at every size: their latency is timed
PACKAGES = ("torch", "torchvision", "timm", "transformers", "ultralytics", "onnx", "onnxruntime", "onnxscript",
            "onnxsim", "numpy", "ray")


@dataclass(frozen=True)
class RunConfig:
    """What every job of a run shares."""

    settings: JobSettings
    limits: Limits
    work_root: str
    keep_work: bool = False
    latency_rounds: int = 15
    zoos: tuple[str, ...] = ()  # whose libraries the fork server preloads (all, if empty)


@dataclass(frozen=True)
class ModelJob:
    """One model and the exporters whose cells are still to run."""

    model_id: str
    zoo: str
    family: str
    exporters: tuple[str, ...]


def versions() -> dict[str, Any]:
    """Every package a cell involves, Python, and fxtrt's commit (plus a hash of uncommitted fxtrt/ changes)."""
    from benchmarks.fidelity import _git_state  # the fidelity benchmark's record of which fxtrt ran

    found: dict[str, Any] = {}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    git = _git_state()
    return found | {"python": platform.python_version(), "fxtrt_commit": git["commit"],
                    "fxtrt_uncommitted": git["fxtrt_uncommitted"]}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _died(row: dict[str, Any], exit_: ChildExit, limits: Limits, phase: str) -> dict[str, Any]:
    """A dead child's row: TIMEOUT or OOM unless it had already answered wrong (SILENT)."""
    death = exit_.death(limits)
    if row.get("outcome") != Outcome.SILENT.value and (exit_.timed_out or exit_.oom):
        row["outcome"] = TIMEOUT if exit_.timed_out else OOM
        row["detail"] = f"{death} in phase {phase}"
        row["error_type"] = "Timeout" if exit_.timed_out else "OutOfMemory"
    elif "error_type" not in row:
        row["error_type"] = "ChildDied"
    row.setdefault("error_line", death)
    row.setdefault("error_frame", f"phase {phase}")
    return row


def _cell(ctx: Any, key: str, exporter: str, config: RunConfig, limits: Limits, ref_dir: Path, cell_dir: Path) -> dict[str, Any]:
    cell_dir.mkdir(parents=True, exist_ok=True)
    settings = replace(config.settings, ort_threads=limits.threads)
    exit_ = run_child(ctx, child.cell, (key, exporter, settings, ref_dir, cell_dir, limits.threads), limits)
    row = _read_json(cell_dir / CELL_RESULT) or {"exporter": exporter}
    phase = row.get("phase", "build")
    row = finish_row(row, RunnerExit(exit_.exitcode, exit_.timed_out), limits.timeout_s, cell_dir)
    if not exit_.ok:
        row = _died(row, exit_, limits, phase)
    row.update(key=key, exporter=exporter, cell_s=exit_.wall_s, watch_rss_mb=exit_.max_rss_mb)
    return row


def _unbuilt(job: ModelJob, base: dict[str, Any], prepared: dict[str, Any], exit_: ChildExit, limits: Limits) -> Iterator[dict[str, Any]]:
    """One BUILD_FAILED row per exporter, saying why for each variant tried."""
    notes = prepared.get("notes") or []
    if not exit_.ok:
        notes = [*notes, f"prepare: {exit_.death(limits)}"]
    fields = {k: prepared.get(k) for k in ("error_type", "error_line", "error_frame")}
    if not exit_.ok and not prepared:
        fields = {"error_type": "Timeout" if exit_.timed_out else "OutOfMemory" if exit_.oom else "ChildDied",
                  "error_line": exit_.death(limits), "error_frame": "prepare"}
    for exporter in job.exporters:
        row = {**base, "exporter": exporter, "outcome": BUILD_FAILED, "detail": " | ".join(notes) or "no variant",
               "cell_s": exit_.wall_s / len(job.exporters), **fields}
        yield {"kind": "cell", "row": row}


def _latency(ctx: Any, rows: list[dict[str, Any]], ref_dir: Path, work: Path, config: RunConfig, limits: Limits) -> dict[str, Any]:
    exports = {r["exporter"]: (r.get("served_by") or r["onnx_path"], r.get("onnx_input_names")) for r in rows
               if r.get("outcome") in TIMED and r.get("onnx_path") and Path(r["onnx_path"]).exists()}
    if not exports:
        return {}
    out = work / child.LATENCY
    run_child(ctx, child.latency, (exports, ref_dir, out, config.latency_rounds, limits.threads),
              replace(limits, timeout_s=min(limits.timeout_s, 300.0)))
    return _read_json(out)


def run_model(job: ModelJob, config: RunConfig, threads: int) -> Iterator[dict[str, Any]]:
    """Prepare ``job``'s model, run each exporter's cell, then time what ran; yields events (module doc)."""
    limits = replace(config.limits, threads=threads)
    if config.zoos:
        os.environ.setdefault(ZOOS_ENV, ",".join(config.zoos))  # read once, when this process's server starts
    ctx = context()
    work = Path(config.work_root) / job.model_id.replace("/", "__").replace(":", "_")
    shutil.rmtree(work, ignore_errors=True)
    ref_dir = work / "reference"
    ref_dir.mkdir(parents=True)
    base = {"model": job.model_id, "zoo": job.zoo, "family": job.family, "host": platform.node(), "versions": versions()}
    try:
        exit_ = run_child(ctx, child.prepare, (job.model_id, config.settings, ref_dir, threads), limits)
        prepared = _read_json(ref_dir / child.PREPARED)
        base["family"] = prepared.get("family") or job.family
        if not prepared.get("ok"):
            yield from _unbuilt(job, base, prepared, exit_, limits)
            return
        base.update(dims=prepared["dims"], variant=prepared["variant"], input=prepared["input"],
                    prepare_s=exit_.wall_s, notes=prepared.get("notes"))
        rows = []
        for exporter in job.exporters:
            row = _cell(ctx, prepared["key"], exporter, config, limits, ref_dir, work / exporter)
            rows.append({**row, **base})
            yield {"kind": "cell", "row": rows[-1]}
        timed = _latency(ctx, rows, ref_dir, work, config, limits)
        if timed.get("ms"):
            yield {"kind": "latency", "model": job.model_id, "ms": timed["ms"], "min_ms": timed.get("min_ms", {}),
                   "rounds": timed["rounds"]}
    finally:
        if not config.keep_work:
            shutil.rmtree(work, ignore_errors=True)
