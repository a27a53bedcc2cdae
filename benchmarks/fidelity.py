"""Fidelity benchmark: does each exporter's dynamic-batch ONNX match eager at every batch size?

    python -m benchmarks.fidelity [--quick] [--models PATTERN] [--exporters NAMES] [--out DIR]

Every corpus model is exported from a batch-1 example by each exporter, then
run on ONNX Runtime at batch 1, 3, 8 and 32 and compared with eager PyTorch;
the dyn family's models, dynamic in image size, sequence or audio length as
well, are judged at batch 1, 3, 8 times several sizes of each such dim.
Results go to ``benchmarks/results/<date>/`` (or ``--out``): results.json,
results.csv, results.md and fidelity.png.  See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from benchmarks.corpus import all_specs, select_specs
from benchmarks.exporters import EXPORTERS, select_exporters
from benchmarks.figure import write_figure
from benchmarks.ort_runner import LatencySettings
from benchmarks.report import FIGURE_NAME, outcome_counts, write_results
from benchmarks.runner import ProgressEvent, RunResults, run_corpus
from benchmarks.worker import JobSettings

RESULTS_ROOT = Path(__file__).resolve().parent / "results"
REPO_ROOT = RESULTS_ROOT.parents[1]
QUICK_LATENCY = LatencySettings(min_runs=3, max_runs=5, budget_s=0.5)
FULL_LATENCY = LatencySettings()
_VERSIONED = ("torch", "torchvision", "timm", "transformers", "onnx", "onnxruntime", "onnxsim", "onnxscript", "fxtrt")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fidelity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="at most 8 small models, fewer latency runs")
    parser.add_argument("--models", help="comma-separated globs or substrings of family/model, e.g. 'seed/*,resnet'")
    parser.add_argument("--exporters", help=f"comma-separated subset of {','.join(EXPORTERS)}")
    parser.add_argument("--out", type=Path, help="output directory (default benchmarks/results/<date>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per job before it is killed")
    parser.add_argument("--keep-onnx", action="store_true", help="keep the work directory (ONNX files, logs) in /tmp")
    parser.add_argument("--list", action="store_true", help="list the selected models and exit")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_state() -> dict[str, Any]:
    """The commit, and a hash of the uncommitted changes under fxtrt/ ("" if none, None if git failed).

    Each job imports fxtrt afresh, so a tree edited during the run shows up as a
    different hash in ``git_at_finish``.
    """

    def git(*cmd: str) -> str | None:
        try:
            out = subprocess.run(["git", *cmd], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout if out.returncode == 0 else None

    commit, diff = git("rev-parse", "HEAD"), git("diff", "HEAD", "--", "fxtrt")
    untracked = (git("ls-files", "--others", "--exclude-standard", "--", "fxtrt") or "").split()
    digest = hashlib.blake2b(digest_size=8)
    digest.update((diff or "").encode())
    for name in untracked:
        digest.update(name.encode())
        try:
            digest.update((REPO_ROOT / name).read_bytes())
        except OSError:  # removed since git listed it
            pass
    changed = bool(diff or untracked)
    return {
        "commit": commit.strip() if commit else None,
        "fxtrt_uncommitted": None if diff is None else (digest.hexdigest() if changed else ""),
    }


def _meta(args: argparse.Namespace, settings: JobSettings, exporters: Sequence[Any], specs: Sequence[Any]) -> dict[str, Any]:
    return {
        "date": dt.date.today().isoformat(),
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "complete": False,
        "command": " ".join(["python -m benchmarks.fidelity", *sys.argv[1:]]),
        "quick": args.quick,
        "settings": asdict(settings),
        "timeout_s": args.timeout,
        "exporters": [{"name": e.name, "label": e.label} for e in exporters],
        "models": [
            {"name": s.name, "family": s.family, "note": s.note}
            | ({"shapes": s.shapes_text(settings.batches, settings.batch_profile)} if s.has_own_shapes else {})
            for s in specs
        ],
        "versions": {p: _version(p) for p in _VERSIONED},
        "git": _git_state(),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }


def _bundle(meta: dict[str, Any], results: RunResults) -> dict[str, Any]:
    return {"meta": meta, "rows": results.rows, "skipped": results.skipped, "references": results.references}


def _print_event(event: ProgressEvent) -> None:
    prefix = f"[{event.index:>2}/{event.total}] {event.model}"
    if event.kind == "model":
        print(prefix, flush=True)
    elif event.kind == "skipped":
        print(f"{prefix}: SKIPPED, {event.reason}", flush=True)
    elif event.row is not None:
        row = event.row
        parts = [f"    {row['exporter']:<12} {row.get('outcome', '?'):<8}"]
        if row.get("export_s") is not None:
            parts.append(f"export {row['export_s']:6.1f}s")
        if row.get("max_abs_err") is not None:
            parts.append(f"err {row['max_abs_err']:.1e}")
        if row.get("onnx_nodes") is not None:
            parts.append(f"nodes {row['onnx_nodes']} (shape {row.get('shape_ops')})")
        if row.get("ort_ms_b1") is not None:
            parts.append(f"ort b1 {row['ort_ms_b1']:.3g} ms")
        if row.get("detail"):
            parts.append(f"| {row['detail'][:110]}")
        print("  ".join(parts), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    specs = select_specs(args.models, quick=args.quick)
    try:
        exporters = select_exporters(args.exporters.split(",") if args.exporters else None)
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 2
    settings = JobSettings(seed=args.seed, latency=QUICK_LATENCY if args.quick else FULL_LATENCY)
    if args.list:
        for spec in specs:
            shapes = f" [{spec.shapes_text(settings.batches, settings.batch_profile)}]" if spec.has_own_shapes else ""
            print(f"{spec.name:<40} {spec.note}{shapes}")
        print(f"{len(specs)} of {len(all_specs())} models")
        return 0
    if not specs:
        print(f"no corpus model matches {args.models!r} (try --list)", file=sys.stderr)
        return 2

    out_dir: Path = args.out or RESULTS_ROOT / dt.date.today().isoformat()
    out_dir.mkdir(parents=True, exist_ok=True)
    # Outside the repo on purpose: results/ is committed, exported models are not.
    work_dir = Path(tempfile.mkdtemp(prefix="fxtrt-fidelity-"))
    meta = _meta(args, settings, exporters, specs)
    print(f"{len(specs)} models x {len(exporters)} exporters -> {out_dir}", flush=True)

    start = time.perf_counter()
    results = RunResults()
    try:
        run_corpus(
            specs, exporters, settings, work_dir,
            timeout_s=args.timeout, keep_onnx=args.keep_onnx, on_event=_print_event,
            on_model_done=lambda partial: write_results(out_dir, _bundle(meta, partial), final=False),
            results=results,
        )
        meta["complete"] = True
    except KeyboardInterrupt:
        print("interrupted: writing the results so far", file=sys.stderr)
    finally:
        if not args.keep_onnx:
            shutil.rmtree(work_dir, ignore_errors=True)
    meta["wall_s"] = time.perf_counter() - start
    meta["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    meta["git_at_finish"] = _git_state()
    bundle = _bundle(meta, results)
    written = write_results(out_dir, bundle, final=True)
    written.append(write_figure(out_dir / FIGURE_NAME, results.rows, [e.name for e in exporters]))
    for exporter in exporters:
        counts = outcome_counts(results.rows, exporter.name)
        print(f"{exporter.name:<12} " + ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())))
    print(f"done in {meta['wall_s']:.0f} s; wrote {', '.join(p.name for p in written)} to {out_dir}")
    if args.keep_onnx:
        print(f"exported models and logs kept in {work_dir}")
    return 0 if meta["complete"] else 130


if __name__ == "__main__":
    sys.exit(main())
