"""Run the corpus: per model one reference job, then one job per exporter, each in its own child process.

Children are forked from a multiprocessing fork server that has imported
torch, torchvision, timm, transformers, onnx, onnxruntime and onnxsim once
(``benchmarks.preload``), so a job starts in milliseconds instead of the
~8 s those imports take, and still gets a process of its own.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
import time
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any, Callable, Sequence

from benchmarks.exporters import Exporter
from benchmarks.model_spec import ModelSpec, case_text
from benchmarks.outcomes import Outcome
from benchmarks.worker import CELL_RESULT, LOG_FILE, REFERENCE_META, JobSettings, run_cell, run_reference

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProgressEvent:
    """Reported to the caller as the run goes: ``kind`` is "model", "skipped" or "cell"."""

    kind: str
    index: int
    total: int
    model: str
    row: dict[str, Any] | None = None
    reason: str = ""


@dataclass
class RunResults:
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    references: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class ChildExit:
    exitcode: int | None
    timed_out: bool


def _mp_context() -> BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["benchmarks.preload"])
    return ctx


def _run_child(ctx: BaseContext, target: Callable[..., None], args: tuple[Any, ...], timeout_s: float) -> ChildExit:
    process = ctx.Process(target=target, args=args, daemon=True)
    process.start()
    try:
        process.join(timeout_s)
        timed_out = process.is_alive()
        if timed_out:
            process.kill()
            process.join()
    except BaseException:
        process.kill()
        process.join()
        raise
    return ChildExit(process.exitcode, timed_out)


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def _death_text(child: ChildExit, timeout_s: float) -> str:
    if child.timed_out:
        return f"timed out after {timeout_s:.0f} s"
    code = child.exitcode
    return f"process died with signal {-code}" if code is not None and code < 0 else f"process exited with code {code}"


def finish_row(row: dict[str, Any], child: ChildExit, timeout_s: float, cell_dir: Path) -> dict[str, Any]:
    """Turn a child's last checkpoint into a final row; a child that died mid-phase gets the phase's outcome."""
    phase = row.get("phase", "build")
    if phase == "done":
        return row
    death = _death_text(child, timeout_s)
    if phase == "export":
        row.update(outcome=Outcome.CRASH.value, detail=f"{death} during export")
    elif phase.startswith(("stats", "session", "evaluate")):
        where = f" at {case_text(phase.split('@')[1])}" if "@" in phase else f" ({phase})"
        wrong = next((k for k, v in (row.get("batches") or {}).items() if v["status"] == "wrong"), None)
        if wrong is not None:  # SILENT outranks LOUD
            row.update(outcome=Outcome.SILENT.value, detail=f"{case_text(wrong)}: {row['batches'][wrong]['detail']}; then {death}{where}")
        else:
            row.update(outcome=Outcome.LOUD.value, detail=f"{death} while running the ONNX model{where}")
    elif phase.startswith("latency"):
        row["detail"] = (row.get("detail") or "") + f" [{death} while timing {phase}]"
    else:
        row.update(outcome=Outcome.ERROR.value, detail=f"harness: {death} in phase {phase}; log: {_log_tail(cell_dir / LOG_FILE)}")
    row["phase"] = "done"
    return row


def _run_reference(
    ctx: BaseContext, spec: ModelSpec, settings: JobSettings, ref_dir: Path, timeout_s: float
) -> dict[str, Any]:
    ref_dir.mkdir(parents=True, exist_ok=True)
    child = _run_child(ctx, run_reference, (spec.name, settings, ref_dir), timeout_s)
    meta_path = ref_dir / REFERENCE_META
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    return {"model": spec.name, "ok": False, "error": f"{_death_text(child, timeout_s)}; log: {_log_tail(ref_dir / LOG_FILE)}"}


def _run_cell(
    ctx: BaseContext,
    spec: ModelSpec,
    exporter: Exporter,
    settings: JobSettings,
    ref_dir: Path,
    cell_dir: Path,
    timeout_s: float,
) -> dict[str, Any]:
    cell_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    child = _run_child(ctx, run_cell, (spec.name, exporter.name, settings, ref_dir, cell_dir), timeout_s)
    result_path = cell_dir / CELL_RESULT
    row = json.loads(result_path.read_text()) if result_path.exists() else {"model": spec.name, "exporter": exporter.name}
    if child.timed_out or child.exitcode != 0:
        log.warning("%s x %s: %s in phase %s", spec.name, exporter.name, _death_text(child, timeout_s), row.get("phase"))
    row = finish_row(row, child, timeout_s, cell_dir)
    row["cell_s"] = time.perf_counter() - start
    return row


def run_corpus(
    specs: Sequence[ModelSpec],
    exporters: Sequence[Exporter],
    settings: JobSettings,
    work_dir: Path,
    *,
    timeout_s: float = 900.0,
    keep_onnx: bool = False,
    on_event: Callable[[ProgressEvent], None] = lambda event: None,
    on_model_done: Callable[[RunResults], None] = lambda results: None,
    results: RunResults | None = None,
) -> RunResults:
    """Run every (model, exporter) cell; a model whose reference fails is reported and skipped.

    Rows are appended to ``results`` (a new one if None) as they finish, so a
    caller that is interrupted still holds everything finished so far.
    """
    ctx = _mp_context()
    results = results if results is not None else RunResults()
    total = len(specs)
    for index, spec in enumerate(specs, 1):
        on_event(ProgressEvent("model", index, total, spec.name))
        model_start = time.perf_counter()
        model_dir = work_dir / spec.name.replace("/", "__")
        reference = _run_reference(ctx, spec, settings, model_dir / "reference", timeout_s)
        results.references[spec.name] = reference
        if not reference.get("ok"):
            results.skipped.append({"model": spec.name, "reason": reference.get("error", "unknown")})
            on_event(ProgressEvent("skipped", index, total, spec.name, reason=reference.get("error", "")))
        else:
            for exporter in exporters:
                cell_dir = model_dir / exporter.name
                row = _run_cell(ctx, spec, exporter, settings, model_dir / "reference", cell_dir, timeout_s)
                row["family"] = spec.family
                results.rows.append(row)
                on_event(ProgressEvent("cell", index, total, spec.name, row=row))
                if not keep_onnx:
                    for onnx_file in cell_dir.rglob("*.onnx*"):
                        onnx_file.unlink()
        if not keep_onnx:
            shutil.rmtree(model_dir / "reference", ignore_errors=True)
        reference["model_s"] = time.perf_counter() - model_start
        on_model_done(results)
    return results
