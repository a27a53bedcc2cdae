"""What runs inside one child process: a model's eager reference, or one (model, exporter) cell.

Each job runs in a fresh child forked from a server that has only imported
the libraries, so an export's peak RSS is its own, and a segfault or a hang
in an exporter costs one cell, not the run.  A cell writes its result row
after every phase (``checkpoint``), so the parent can tell from the last
phase written what a dead child was doing.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import resource
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from benchmarks.corpus import get_spec
from benchmarks.exporters import EXPORTERS, ExportResult, ExportSpec
from benchmarks.model_prep import flatten_outputs, make_inputs, prepare_model
from benchmarks.onnx_stats import graph_stats
from benchmarks.ort_runner import LatencySettings, build_feed, make_session, median_latency_ms, run
from benchmarks.outcomes import Outcome, Tolerance, check_output, max_or_none

log = logging.getLogger(__name__)

REFERENCE_ARRAYS = "reference.npz"
REFERENCE_META = "reference.json"
CELL_RESULT = "result.json"
LOG_FILE = "log.txt"


class HarnessError(RuntimeError):
    """The benchmark itself could not run a job (not the exporter's fault)."""


@dataclass(frozen=True)
class JobSettings:
    """Frozen settings shared by every job of a run."""

    seed: int = 0
    batches: tuple[int, ...] = (1, 3, 8, 32)
    latency_batches: tuple[int, ...] = (1, 8)
    latency: LatencySettings = field(default_factory=LatencySettings)
    tolerance: Tolerance = field(default_factory=Tolerance)
    opset: int = 17
    batch_profile: tuple[int, int, int] = (1, 8, 32)

    def __post_init__(self) -> None:
        if 1 not in self.batches:
            raise ValueError("batches must include 1, the export example's batch size")
        if len(self.batches) < 2:
            raise ValueError("batches needs at least one size besides 1")


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def _redirect_output(log_path: Path) -> None:
    """Send this process's stdout/stderr (exporters print a lot, some from C++) and logging to a file."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _error_text(exc: BaseException, limit: int = 600) -> str:
    """``Type: message (file:line) [notes]``: the message's first lines, the innermost frame, any notes."""
    message = " ".join(_ANSI.sub("", str(exc)).strip().splitlines()[:6])
    if len(message) > limit:
        message = message[:limit] + "..."
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    notes = "".join(f" [{note}]" for note in getattr(exc, "__notes__", []))
    return f"{type(exc).__name__}: {message}{where}{notes}"


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where not supported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _output_batch_dims(shapes: dict[int, list[tuple[int, ...]]]) -> list[int | None]:
    """Per output, the dim that scales with the batch size at every batch checked (None if none does)."""
    dims: list[int | None] = []
    for j, base in enumerate(shapes[1]):
        found = None
        for d in range(len(base)):
            if all(
                len(s[j]) == len(base) and s[j][d] == base[d] * b and all(s[j][k] == base[k] for k in range(len(base)) if k != d)
                for b, s in shapes.items()
            ):
                found = d
                break
        dims.append(found)
    return dims


def run_reference(model_name: str, settings: JobSettings, ref_dir: Path) -> None:
    """Build the model, run eager at every batch size, and save inputs, outputs and metadata."""
    _redirect_output(ref_dir / LOG_FILE)
    meta: dict[str, Any] = {"model": model_name, "ok": False}
    try:
        spec = get_spec(model_name)
        t0 = time.perf_counter()
        prepared = prepare_model(spec, settings.seed)
        meta.update(
            build_s=time.perf_counter() - t0,
            fingerprint=prepared.fingerprint,
            n_params=prepared.n_params,
            filled_parameters=len(prepared.filled_parameters),
        )
        arrays: dict[str, np.ndarray] = {}
        shapes: dict[int, list[tuple[int, ...]]] = {}
        eager_ms: dict[int, float] = {}
        with torch.inference_mode():
            for b in settings.batches:
                inputs = make_inputs(spec, b, settings.seed)
                t1 = time.perf_counter()
                outputs = flatten_outputs(prepared.module(*inputs))
                eager_ms[b] = (time.perf_counter() - t1) * 1e3
                for i, t in enumerate(inputs):
                    arrays[f"in_{b}_{i}"] = t.numpy()
                for j, t in enumerate(outputs):
                    arrays[f"out_{b}_{j}"] = t.numpy()
                shapes[b] = [tuple(t.shape) for t in outputs]
        if not shapes[1]:
            raise HarnessError("the model returned no tensors")
        tmp = ref_dir / ("tmp_" + REFERENCE_ARRAYS)
        np.savez(tmp, **arrays)
        os.replace(tmp, ref_dir / REFERENCE_ARRAYS)
        meta.update(
            ok=True,
            n_outputs=len(shapes[1]),
            output_shapes_b1=shapes[1],
            output_batch_dims=_output_batch_dims(shapes),
            eager_ms=eager_ms,
        )
    except Exception as exc:  # noqa: BLE001 - any failure to build or run eager skips the model
        log.exception("reference for %s failed", model_name)
        meta["error"] = _error_text(exc)
    write_json_atomic(ref_dir / REFERENCE_META, meta)


def _seed_input_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """The seed names a lone input ``"input"``; several inputs keep the forward's argument names."""
    return ("input",) if len(names) == 1 else names


def run_cell(model_name: str, exporter_name: str, settings: JobSettings, ref_dir: Path, cell_dir: Path) -> None:
    """Export one model with one exporter, check it against the eager reference, time it."""
    _redirect_output(cell_dir / LOG_FILE)
    # The fork server froze its imports out of the collector's reach (cheap forks); let this
    # process collect like any exporting script would, so export times include normal GC work.
    gc.unfreeze()
    cell = _Cell(model_name, exporter_name, settings, ref_dir, cell_dir)
    cell.checkpoint("build")
    try:
        cell.run()
    except Exception as exc:  # noqa: BLE001 - a harness failure is recorded, not raised
        log.exception("cell %s x %s failed in the harness", model_name, exporter_name)
        cell.row.update(outcome=Outcome.ERROR.value, detail=f"harness, phase {cell.row['phase']}: {_error_text(exc)}")
    cell.checkpoint("done")


class _Cell:
    """One (model, exporter) job; ``row`` is the result, written to disk at every phase."""

    def __init__(self, model_name: str, exporter_name: str, settings: JobSettings, ref_dir: Path, cell_dir: Path) -> None:
        self.spec = get_spec(model_name)
        self.exporter = EXPORTERS[exporter_name]
        self.settings = settings
        self.ref_dir = ref_dir
        self.cell_dir = cell_dir
        self.row: dict[str, Any] = {"model": model_name, "exporter": exporter_name}
        self._phase_start = time.perf_counter()
        self.n_inputs = len(self.spec.input_names)

    def checkpoint(self, phase: str) -> None:
        """Record that ``phase`` starts (and how long the previous one took), on disk."""
        now = time.perf_counter()
        previous = self.row.get("phase")
        if previous is not None and previous != phase:
            self.row.setdefault("phase_s", {})[previous] = now - self._phase_start
        self._phase_start = now
        self.row["phase"] = phase
        write_json_atomic(self.cell_dir / CELL_RESULT, self.row)

    def run(self) -> None:
        meta = json.loads((self.ref_dir / REFERENCE_META).read_text())
        arrays = np.load(self.ref_dir / REFERENCE_ARRAYS)
        result = self._export(meta, arrays)
        if result is None:
            return
        self.checkpoint("stats")
        try:
            stats = graph_stats(result.onnx_path)
            self.row.update(
                onnx_nodes=stats.nodes, shape_ops=stats.shape_ops,
                onnx_mb=stats.file_bytes / 2**20, op_counts=stats.op_counts,
            )
        except Exception as exc:  # noqa: BLE001 - a graph we cannot read will fail to load in ORT too
            self.row["stats_error"] = _error_text(exc)
        self.checkpoint("session")
        try:
            session = make_session(result.onnx_path)
        except Exception as exc:  # noqa: BLE001 - ORT rejected the exported file
            self.row.update(outcome=Outcome.LOUD.value, detail=f"ORT could not load the model: {_error_text(exc)}")
            return
        feeds = _Feeds(session, arrays, self.n_inputs, result.input_names)
        self._evaluate(feeds, arrays, meta["n_outputs"])
        self._time_latency(session, feeds)

    def _export(self, meta: dict[str, Any], arrays: Any) -> ExportResult | None:
        """Build the model as the reference did and export it; None (outcome set) if the exporter raised."""
        prepared = prepare_model(self.spec, self.settings.seed)
        if prepared.fingerprint != meta["fingerprint"]:
            raise HarnessError("weights differ from the reference process's: the model build is not deterministic")
        example = tuple(torch.from_numpy(arrays[f"in_1_{i}"]) for i in range(self.n_inputs))
        export_spec = ExportSpec(
            input_names=_seed_input_names(self.spec.input_names),
            batch_dims=self.spec.batch_dims,
            output_batch_dims=tuple(meta["output_batch_dims"]),
            opset=self.settings.opset,
            batch_profile=self.settings.batch_profile,
        )
        self.checkpoint("export")
        peak_is_exact = _reset_peak_rss()
        rss_before = _rss_mb()
        t0 = time.perf_counter()
        try:
            result = self.exporter.export(prepared.module, example, export_spec, self.cell_dir / "model.onnx")
            error = None
        except Exception as exc:  # noqa: BLE001 - classified below
            result, error = None, exc
        self.row["export_s"] = time.perf_counter() - t0
        peak = _peak_rss_mb()
        self.row.update(peak_rss_mb=peak, export_rss_mb=max(0.0, peak - rss_before) if peak_is_exact else None)
        if error is not None:
            refused = isinstance(error, self.exporter.refusals())
            self.row.update(
                outcome=(Outcome.REFUSED if refused else Outcome.CRASH).value,
                detail=_error_text(error),
                error_type=type(error).__name__,
            )
        return result

    def _evaluate(self, feeds: "_Feeds", arrays: Any, n_outputs: int) -> None:
        """Run every batch size; set outcome, detail, per-batch status and the max errors."""
        batches: dict[str, dict[str, Any]] = {}
        self.row["batches"] = batches
        for b in self.settings.batches:
            self.checkpoint(f"evaluate@{b}")
            want = [arrays[f"out_{b}_{j}"] for j in range(n_outputs)]
            try:
                got = run(feeds.session, feeds.for_batch(b))
            except Exception as exc:  # noqa: BLE001 - an error at run time is the LOUD outcome
                batches[str(b)] = {"status": "raised", "detail": _error_text(exc, 300)}
                continue
            if len(got) != len(want):
                batches[str(b)] = {"status": "wrong", "detail": f"{len(got)} outputs, eager has {len(want)}"}
                continue
            checks = [check_output(g, w, self.settings.tolerance) for g, w in zip(got, want)]
            bad = [f"output {j}: {c.reason}" for j, c in enumerate(checks) if not c.ok]
            batches[str(b)] = {
                "status": "wrong" if bad else "ok",
                "detail": "; ".join(bad),
                "max_abs_err": max_or_none([c.max_abs_err for c in checks]),
                "max_rel_err": max_or_none([c.max_rel_err for c in checks]),
            }
        self.row.update(
            max_abs_err=max_or_none([v.get("max_abs_err") for v in batches.values()]),
            max_rel_err=max_or_none([v.get("max_rel_err") for v in batches.values()]),
        )
        for status, outcome in (("wrong", Outcome.SILENT), ("raised", Outcome.LOUD)):
            first = next((b for b, v in batches.items() if v["status"] == status), None)
            if first is not None:
                self.row.update(outcome=outcome.value, detail=f"batch {first}: {batches[first]['detail']}")
                return
        self.row.update(outcome=Outcome.PASS.value, detail="")

    def _time_latency(self, session: Any, feeds: "_Feeds") -> None:
        """Median ORT latency at each latency batch size that ran (right or wrong) without raising."""
        for b in self.settings.latency_batches:
            key = f"ort_ms_b{b}"
            self.row[key] = None
            if self.row["batches"].get(str(b), {}).get("status") not in ("ok", "wrong"):
                continue
            self.checkpoint(f"latency@{b}")
            self.row[key] = median_latency_ms(session, feeds.for_batch(b), self.settings.latency)


class _Feeds:
    """ORT feeds for each batch size, from the saved reference inputs."""

    def __init__(self, session: Any, arrays: Any, n_inputs: int, names: tuple[str, ...] | None) -> None:
        self.session = session
        self.arrays = arrays
        self.n_inputs = n_inputs
        self.names = names

    def for_batch(self, batch: int) -> dict[str, np.ndarray]:
        inputs = [self.arrays[f"in_{batch}_{i}"] for i in range(self.n_inputs)]
        return build_feed(self.session, inputs, self.names)
