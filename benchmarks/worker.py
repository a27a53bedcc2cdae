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
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import psutil
import torch

from benchmarks.corpus import get_spec
from benchmarks.exporters import EXPORTERS, ExportResult, ExportSpec
from benchmarks.model_prep import flatten_outputs, make_inputs, prepare_model
from benchmarks.model_spec import Case, ModelSpec, case_text
from benchmarks.onnx_stats import graph_stats
from benchmarks.ort_runner import LatencySettings, build_feed, fixed_dims, make_session, median_latency_ms, run
from benchmarks.outcomes import Outcome, Tolerance, check_output, max_or_none
from fxtrt.compare import other_thread_count, roundoff_verdict

log = logging.getLogger(__name__)

REFERENCE_ARRAYS = "reference.npz"
REFERENCE_META = "reference.json"
CELL_RESULT = "result.json"
LOG_FILE = "log.txt"

# How a job finds its model by name: the corpus by default; the zoo sweep passes its own
# (a module-level function, so the fork server can pickle it by reference).
SpecResolver = Callable[[str], ModelSpec]


class HarnessError(RuntimeError):
    """The benchmark itself could not run a job (not the exporter's fault)."""


@dataclass(frozen=True)
class JobSettings:
    """Frozen settings shared by every job of a run (a model's spec may narrow the batches and profile)."""

    seed: int = 0
    batches: tuple[int, ...] = (1, 3, 8, 32)
    latency_batches: tuple[int, ...] = (1, 8)
    latency: LatencySettings = field(default_factory=LatencySettings)
    tolerance: Tolerance = field(default_factory=Tolerance)
    opset: int = 17
    batch_profile: tuple[int, int, int] = (1, 8, 32)
    ort_threads: int | None = None  # ONNX Runtime's intra-op threads; None: one per CPU

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


def _frame_name(frame: traceback.FrameSummary) -> str:
    """``torch/onnx/_internal/x.py:function``: the file below site-packages (or from the repo's
    package down) and the function, without a line number, so one bug's variants group together."""
    parts = Path(frame.filename).parts
    if "site-packages" in parts:
        parts = parts[len(parts) - parts[::-1].index("site-packages"):]
    else:
        top = next((i for i, p in enumerate(parts) if p in ("fxtrt", "benchmarks", "tests")), len(parts) - 1)
        parts = parts[top:]
    return f"{'/'.join(parts)}:{frame.name}"


def _error_fields(exc: BaseException) -> dict[str, str]:
    """What failure tables group by: the type, the message's first line and the innermost frame."""
    lines = _ANSI.sub("", str(exc)).strip().splitlines()
    frames = traceback.extract_tb(exc.__traceback__)
    return {
        "error_type": type(exc).__name__,
        "error_line": (lines[0] if lines else "")[:300],
        "error_frame": _frame_name(frames[-1]) if frames else "",
    }


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


Shapes = list[tuple[int, ...]]


def _output_batch_dims(shapes: dict[int, Shapes]) -> list[int | None]:
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


def _output_dynamic_dims(
    shapes: dict[Case, Shapes], batch_dims: Sequence[int | None]
) -> list[dict[int, str]]:
    """Per output, the dims besides the batch that change with the dynamic dims (at batch 1).

    A dim that always equals one dynamic dim's size takes its name (a
    segmentation map's ``size``); any other is named after the output and
    dim (``output_0_dim2``), as a derived size such as ``size/32`` would be.
    """
    at_batch_1 = {case: s for case, s in shapes.items() if case.batch == 1}
    out: list[dict[int, str]] = []
    for j, batch_dim in enumerate(batch_dims):
        named: dict[int, str] = {}
        rank = len(next(iter(at_batch_1.values()))[j])
        for d in range(rank):
            values = {case: s[j][d] for case, s in at_batch_1.items() if len(s[j]) == rank}
            if d == batch_dim or len(set(values.values())) < 2:
                continue
            same = [n for n, _ in next(iter(values)).sizes if all(dict(c.sizes)[n] == v for c, v in values.items())]
            named[d] = same[0] if same else f"output_{j}_dim{d}"
        out.append(named)
    return out


def _reference_cases(spec: ModelSpec, settings: JobSettings) -> tuple[Case, ...]:
    """The judged cases, plus the export example if it is not one of them."""
    cases = spec.cases(settings.batches)
    return cases if spec.example_case in cases else (*cases, spec.example_case)


def run_reference(model_name: str, settings: JobSettings, ref_dir: Path, resolve: SpecResolver = get_spec) -> None:
    """Build the model, run eager at every judged case, and save inputs, outputs and metadata."""
    _redirect_output(ref_dir / LOG_FILE)
    meta: dict[str, Any] = {"model": model_name, "ok": False}
    try:
        spec = resolve(model_name)
        t0 = time.perf_counter()
        prepared = prepare_model(spec, settings.seed)
        meta.update(
            build_s=time.perf_counter() - t0,
            fingerprint=prepared.fingerprint,
            n_params=prepared.n_params,
            filled_parameters=len(prepared.filled_parameters),
        )
        arrays: dict[str, np.ndarray] = {}
        shapes: dict[Case, Shapes] = {}
        eager_ms: dict[str, float] = {}
        with torch.inference_mode():
            for case in _reference_cases(spec, settings):
                inputs = make_inputs(spec, case, settings.seed)
                t1 = time.perf_counter()
                outputs = flatten_outputs(prepared.module(*inputs))
                eager_ms[case.key] = (time.perf_counter() - t1) * 1e3
                for i, t in enumerate(inputs):
                    arrays[f"in_{case.key}_{i}"] = t.numpy()
                for j, t in enumerate(outputs):
                    arrays[f"out_{case.key}_{j}"] = t.numpy()
                shapes[case] = [tuple(t.shape) for t in outputs]
        example = shapes[spec.example_case]
        if not example:
            raise HarnessError("the model returned no tensors")
        # The batch dims are read at the first judged sizes, where every judged batch size ran.
        first_sizes = spec.cases(settings.batches)[0].sizes
        by_batch = {case.batch: s for case, s in shapes.items() if case.sizes == first_sizes}
        output_batch_dims = _output_batch_dims(by_batch)
        tmp = ref_dir / ("tmp_" + REFERENCE_ARRAYS)
        np.savez(tmp, **arrays)
        os.replace(tmp, ref_dir / REFERENCE_ARRAYS)
        meta.update(
            ok=True,
            n_outputs=len(example),
            output_shapes_b1=example,
            output_batch_dims=output_batch_dims,
            output_dynamic=_output_dynamic_dims(shapes, output_batch_dims) if spec.dims else [],
            example=spec.example_case.key,
            cases=[case.key for case in spec.cases(settings.batches)],
            eager_ms=eager_ms,
        )
    except Exception as exc:  # noqa: BLE001 - any failure to build or run eager skips the model
        log.exception("reference for %s failed", model_name)
        meta["error"] = _error_text(exc)
        meta.update(_error_fields(exc))
    write_json_atomic(ref_dir / REFERENCE_META, meta)


def _seed_input_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """The seed names a lone input ``"input"``; several inputs keep the forward's argument names."""
    return ("input",) if len(names) == 1 else names


def run_cell(
    model_name: str, exporter_name: str, settings: JobSettings, ref_dir: Path, cell_dir: Path,
    resolve: SpecResolver = get_spec,
) -> None:
    """Export one model with one exporter, check it against the eager reference, time it."""
    _redirect_output(cell_dir / LOG_FILE)
    # The fork server froze its imports out of the collector's reach (cheap forks); let this
    # process collect like any exporting script would, so export times include normal GC work.
    gc.unfreeze()
    cell = _Cell(model_name, exporter_name, settings, ref_dir, cell_dir, resolve)
    cell.checkpoint("build")
    try:
        cell.run()
    except Exception as exc:  # noqa: BLE001 - a harness failure is recorded, not raised
        log.exception("cell %s x %s failed in the harness", model_name, exporter_name)
        cell.row.update(outcome=Outcome.ERROR.value, detail=f"harness, phase {cell.row['phase']}: {_error_text(exc)}",
                        **_error_fields(exc))
    cell.checkpoint("done")


class _Cell:
    """One (model, exporter) job; ``row`` is the result, written to disk at every phase."""

    def __init__(
        self, model_name: str, exporter_name: str, settings: JobSettings, ref_dir: Path, cell_dir: Path,
        resolve: SpecResolver = get_spec,
    ) -> None:
        self.spec = resolve(model_name)
        self.exporter = EXPORTERS[exporter_name]
        self.settings = settings
        self.ref_dir = ref_dir
        self.cell_dir = cell_dir
        self.row: dict[str, Any] = {"model": model_name, "exporter": exporter_name}
        self._phase_start = time.perf_counter()
        self.n_inputs = len(self.spec.input_names)
        self.cases = self.spec.cases(settings.batches)
        self._float64 = _SecondRuns(self.spec, settings.seed, ref_dir, self.n_inputs)

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
        self.row["onnx_path"] = str(result.onnx_path)
        self.row["onnx_input_names"] = list(result.input_names) if result.input_names else None
        if result.served_by is not None:
            self.row["served_by"] = str(result.served_by)
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
            session = make_session(result.served_by or result.onnx_path, self.settings.ort_threads)
        except Exception as exc:  # noqa: BLE001 - ORT rejected the exported file
            self.row.update(outcome=Outcome.LOUD.value, detail=f"ORT could not load the model: {_error_text(exc)}",
                            **_error_fields(exc))
            return
        feeds = _Feeds(session, arrays, self.n_inputs, result.input_names)
        self._note_fixed_dims(session, result)
        self._evaluate(feeds, arrays, meta["n_outputs"])
        self._time_latency(session, feeds)

    def _dynamic_sites(self) -> dict[int, list[int]]:
        """Per input index, the dims the exporters were told are dynamic (batch first)."""
        sites = {i: [d] for i, d in enumerate(self.spec.batch_dims) if d is not None}
        for i, per_dim in self.spec.dynamic.items():
            sites.setdefault(i, []).extend(sorted(per_dim))
        return sites

    def _note_fixed_dims(self, session: Any, result: ExportResult) -> None:
        """Record the input dims the file fixed although they were declared dynamic (a static export)."""
        fixed = fixed_dims(session, self.n_inputs, result.input_names, self._dynamic_sites())
        if fixed:
            self.row["fixed_dims"] = fixed

    def _export(self, meta: dict[str, Any], arrays: Any) -> ExportResult | None:
        """Build the model as the reference did and export it; None (outcome set) if the exporter raised."""
        prepared = prepare_model(self.spec, self.settings.seed)
        if prepared.fingerprint != meta["fingerprint"]:
            raise HarnessError("weights differ from the reference process's: the model build is not deterministic")
        example = tuple(torch.from_numpy(arrays[f"in_{meta['example']}_{i}"]) for i in range(self.n_inputs))
        export_spec = ExportSpec(
            input_names=_seed_input_names(self.spec.input_names),
            batch_dims=self.spec.batch_dims,
            output_batch_dims=tuple(meta["output_batch_dims"]),
            opset=self.settings.opset,
            batch_profile=self.spec.batch_range or self.settings.batch_profile,
            dynamic=self.spec.dynamic,
            output_dynamic=tuple({int(d): n for d, n in dims.items()} for dims in meta["output_dynamic"]),
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
                **_error_fields(error),
            )
        return result

    def _evaluate(self, feeds: "_Feeds", arrays: Any, n_outputs: int) -> None:
        """Run every judged case; set outcome, detail, per-case status and the max errors.

        ``row["batches"]`` is keyed by case (``"3"``, or ``"3,size=96"`` with dynamic dims).
        """
        batches: dict[str, dict[str, Any]] = {}
        self.row["batches"] = batches
        for case in self.cases:
            key = case.key
            self.checkpoint(f"evaluate@{key}")
            want = [arrays[f"out_{key}_{j}"] for j in range(n_outputs)]
            try:
                got = run(feeds.session, feeds.for_case(key))
            except Exception as exc:  # noqa: BLE001 - an error at run time is the LOUD outcome
                batches[key] = {"status": "raised", "detail": _error_text(exc, 300)}
                if "error_type" not in self.row:
                    self.row.update(_error_fields(exc))
                continue
            if len(got) != len(want):
                batches[key] = {"status": "wrong", "detail": f"{len(got)} outputs, eager has {len(want)}"}
                continue
            checks = [check_output(g, w, self.settings.tolerance) for g, w in zip(got, want)]
            bad, unstable, notes = self._second_opinion(key, got, want, checks)
            batches[key] = {
                "status": "wrong" if bad else "unstable" if unstable else "ok",
                "detail": "; ".join(bad or unstable or notes),
                "max_abs_err": max_or_none([c.max_abs_err for c in checks]),
                "max_rel_err": max_or_none([c.max_rel_err for c in checks]),
            }
        self.row.update(
            max_abs_err=max_or_none([v.get("max_abs_err") for v in batches.values()]),
            max_rel_err=max_or_none([v.get("max_rel_err") for v in batches.values()]),
        )
        fixed = self.row.get("fixed_dims")
        prefix = f"the file fixes dims declared dynamic ({', '.join(fixed)}); " if fixed else ""
        for status, outcome in (("wrong", Outcome.SILENT), ("raised", Outcome.LOUD), ("unstable", Outcome.UNSTABLE)):
            first = next((k for k, v in batches.items() if v["status"] == status), None)
            if first is not None:
                self.row.update(outcome=outcome.value, detail=f"{prefix}{case_text(first)}: {batches[first]['detail']}")
                return
        self.row.update(outcome=Outcome.PASS.value, detail="")

    def _second_opinion(
        self, key: str, got: list[np.ndarray], want: list[np.ndarray], checks: list[Any],
    ) -> tuple[list[str], list[str], list[str]]:
        """The failing outputs, after fxtrt's own float64 rule (``fxtrt.compare.roundoff_verdict``):
        a float output that is about as close to the model run in float64 as eager float32 is (in
        either of two accumulation orders), is round-off, not a wrong export. The same rule for
        every exporter; the float64 model, and the float32 one on another thread count, are built
        (as the reference was) only when some float output fails the rule before them.

        Returns (wrong, unstable, round-off) descriptions: an output still failing is *unstable*,
        not wrong, when eager on the other thread count fails the same check against eager."""
        bad: list[str] = []
        unstable: list[str] = []
        notes: list[str] = []
        tol = self.settings.tolerance
        for j, (g, w, c) in enumerate(zip(got, want, checks)):
            if c.ok:
                continue
            floating = w.dtype.kind == "f" and g.shape == w.shape
            ref64 = self._float64.output(key, j) if floating else None
            ok, note = roundoff_verdict(w, g, ref64, tol.atol) if ref64 is not None else (False, "")
            again = self._float64.output(key, j, torch.float32) if floating and not ok else None
            if again is not None and ref64 is not None:
                ok, note = roundoff_verdict(w, g, ref64, tol.atol, [again])
            text = f"output {j}: {c.reason}" + (f" ({note})" if note else "")
            itself = check_output(again, w, tol) if again is not None and not ok else None
            if ok:
                notes.append(text)
            elif itself is not None and not itself.ok:
                unstable.append(f"{text}; eager itself moves by {itself.max_abs_err:.3g} on another thread count")
            else:
                bad.append(text)
        return bad, unstable, notes

    def _latency_case(self, batch: int) -> Case | None:
        """The judged case timed at ``batch``: the one with the largest dynamic sizes."""
        at_batch = [c for c in self.cases if c.batch == batch]
        return max(at_batch, key=lambda c: [v for _, v in c.sizes]) if at_batch else None

    def _time_latency(self, session: Any, feeds: "_Feeds") -> None:
        """Median ORT latency at each latency batch size that ran (right or wrong) without raising."""
        for b in self.settings.latency_batches:
            column = f"ort_ms_b{b}"
            self.row[column] = None
            case = self._latency_case(b)
            if case is None or self.row["batches"].get(case.key, {}).get("status") not in ("ok", "wrong", "unstable"):
                continue
            self.checkpoint(f"latency@{case.key}")
            self.row[column] = median_latency_ms(session, feeds.for_case(case.key), self.settings.latency)


class _Feeds:
    """ORT feeds for each judged case, from the saved reference inputs."""

    def __init__(self, session: Any, arrays: Any, n_inputs: int, names: tuple[str, ...] | None) -> None:
        self.session = session
        self.arrays = arrays
        self.n_inputs = n_inputs
        self.names = names

    def for_case(self, key: str) -> dict[str, np.ndarray]:
        inputs = [self.arrays[f"in_{key}_{i}"] for i in range(self.n_inputs)]
        return build_feed(self.session, inputs, self.names)


class _SecondRuns:
    """The model run in float64 at a saved case, and in float32 on another thread count (another
    accumulation order, :func:`fxtrt.compare.other_thread_count`): built fresh (same seed, so the
    reference's weights) on first use, since the exporter may have touched the cell's own copy."""

    def __init__(self, spec: ModelSpec, seed: int, ref_dir: Path, n_inputs: int) -> None:
        self.spec, self.seed, self.ref_dir, self.n_inputs = spec, seed, ref_dir, n_inputs
        self._models: dict[torch.dtype, torch.nn.Module] = {}
        self._outputs: dict[tuple[str, torch.dtype], list[np.ndarray] | None] = {}

    def output(self, key: str, index: int, dtype: torch.dtype = torch.float64) -> np.ndarray | None:
        """Output ``index`` at case ``key`` in ``dtype``, or None where the model does not run so."""
        if (key, dtype) not in self._outputs:
            self._outputs[key, dtype] = self._run(key, dtype)
        outs = self._outputs[key, dtype]
        return outs[index] if outs is not None and index < len(outs) else None

    def _run(self, key: str, dtype: torch.dtype) -> list[np.ndarray] | None:
        arrays = np.load(self.ref_dir / REFERENCE_ARRAYS)
        inputs = [torch.from_numpy(arrays[f"in_{key}_{i}"]) for i in range(self.n_inputs)]
        try:
            if dtype not in self._models:
                self._models[dtype] = prepare_model(self.spec, self.seed).module.to(dtype)
            args = [t.to(dtype) if t.is_floating_point() else t for t in inputs]
            with torch.inference_mode(), (other_thread_count() if dtype == torch.float32 else nullcontext()):
                outs = flatten_outputs(self._models[dtype](*args))
        except Exception:  # noqa: BLE001 - a model that cannot run in float64 gets no second opinion
            log.info("%s does not run in %s; no round-off rule", self.spec.name, dtype, exc_info=True)
            return None
        return [t.numpy() for t in outs]
