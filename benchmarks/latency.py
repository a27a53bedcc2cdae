"""Latency benchmark: is fxtrt's ONNX at most as slow on ONNX Runtime as the best baseline's (issue 19, item 4)?

    python -m benchmarks.latency [--models GLOBS] [--rounds 15] [--batches 1,8] [--out DIR] [--tuned]
    python -m benchmarks.latency --issue-bert --rounds 20 --tuned      # the issue's measured BERT

For each fidelity-benchmark model, the fidelity harness (``benchmarks.runner``) exports it with
fxtrt (``verify=False``), onnx_dynamo and onnx_legacy, the recipe of ``benchmarks.fidelity``,
and saves eager's inputs and outputs. One child process per model then opens every file with
fxtrt's ``SessionLoader`` options and times them interleaved (``benchmarks.latency_timing``).
The reported figure per model and batch is the median over rounds of ``fxtrt / best``: best is
the fastest baseline whose file ran at that batch and matched eager there.

``--tuned`` adds ``fxtrt+tune``: fxtrt's file passed through
``fxtrt.backend.onnxruntime.tune.tune_for_onnxruntime``. Compile now runs those rewrites itself
(last step of ``fxtrt.backend.cleanup``), so fxtrt's file is already tuned and the column shows a
second pass changes nothing; the before/after figures in ``results/2026-12-05-latency/`` were
taken with compile untuned.

Results go to ``benchmarks/results/<date>-latency/`` (or ``--out``): ``latency.json`` (every
timing, status and op count) and ``latency.md`` (the table), rewritten after each model.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from benchmarks import latency_issue_case as issue_case
from benchmarks.corpus import select_specs
from benchmarks.exporters import EXPORTERS, select_exporters
from benchmarks.fidelity import _git_state, _version
from benchmarks.latency_timing import MEASURE_RESULT, SUBJECT, TUNED, TimingSettings, measure_model, summarize
from benchmarks.report import _fmt, _md_cell, _table, write_text_atomic
from benchmarks.runner import ProgressEvent, RunResults, _mp_context, _run_child, run_corpus
from benchmarks.worker import JobSettings

RESULTS_ROOT = Path(__file__).resolve().parent / "results"
_VERSIONED = ("torch", "onnx", "onnxruntime", "onnxsim", "onnxscript", "transformers", "timm", "torchvision")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated globs or substrings of family/model, e.g. 'seed/*,tv/*'")
    parser.add_argument("--exporters", help=f"comma-separated subset of {','.join(EXPORTERS)} (fxtrt is required)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (at least 15 for a reported figure)")
    parser.add_argument("--batches", default="1,8", help="batch sizes to time")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs of each session at each batch first")
    parser.add_argument("--min-slice-ms", type=float, default=10.0,
                        help="repeat a fast model's run back to back within its turn until a turn lasts this long "
                             "(0: exactly one run per turn)")
    parser.add_argument("--tuned", action="store_true", help="also time fxtrt's file through tune_for_onnxruntime")
    parser.add_argument("--out", type=Path, help="output directory (default benchmarks/results/<date>-latency)")
    parser.add_argument("--issue-bert", action="store_true",
                        help="time issue 19's measured case (a 4-layer BERT, sequence 64) instead of corpus models")
    parser.add_argument("--append", action="store_true",
                        help="keep the models already in --out's latency.json (a model run again is replaced)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per export or timing job")
    parser.add_argument("--keep-onnx", action="store_true", help="keep the exported files in /tmp")
    parser.add_argument("--list", action="store_true", help="list the selected models and exit")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def _job_settings(seed: int, batches: Sequence[int]) -> JobSettings:
    """The fidelity harness's settings: judged at batch 1 and the timed batches, no timing of its own."""
    judged = tuple(sorted({1, *batches}))
    return JobSettings(seed=seed, batches=judged if len(judged) > 1 else (1, 2), latency_batches=())


class LatencyRun:
    """Runs the models one by one and keeps the results file current."""

    def __init__(self, args: argparse.Namespace, exporters: Sequence[str], out_dir: Path, work_dir: Path) -> None:
        self.args = args
        self.exporters = list(exporters)
        self.out_dir = out_dir
        self.work_dir = work_dir
        self.timing = TimingSettings(rounds=args.rounds, batches=tuple(int(b) for b in args.batches.split(",")),
                                     warmup=args.warmup, min_slice_ms=args.min_slice_ms, tuned=args.tuned)
        self.models: dict[str, dict[str, Any]] = {}
        earlier: list[dict[str, Any]] = []
        previous = out_dir / "latency.json"
        if args.append and previous.exists():
            bundle = json.loads(previous.read_text())
            self.models = bundle["models"]
            earlier = bundle["meta"].get("earlier_runs", []) + [
                {k: v for k, v in bundle["meta"].items() if k != "earlier_runs"}]
        self.meta = {
            "earlier_runs": earlier,
            "started": dt.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(["python -m benchmarks.latency", *sys.argv[1:]]),
            "timing": asdict(self.timing), "exporters": self.exporters, "versions": {p: _version(p) for p in _VERSIONED},
            "git": _git_state(), "cpu_count": os.cpu_count(), "load_at_start": os.getloadavg(), "complete": False,
        }

    def model_done(self, results: RunResults) -> None:
        """After the harness exported one model: time its files in a child, record, write."""
        name = next(reversed(results.references))
        model_dir = self.work_dir / name.replace("/", "__")
        cells = {r["exporter"]: r for r in results.rows if r["model"] == name}
        entry: dict[str, Any] = {"export": {e: {k: cells.get(e, {}).get(k) for k in ("outcome", "detail", "export_s")}
                                            for e in self.exporters}}
        if results.references[name].get("ok"):
            self.time_model(name, model_dir, entry)
        else:
            entry.update(measured={"ok": False, "error": results.references[name].get("error")}, rows=[])
            self.finish(name, model_dir, entry)

    def time_model(self, name: str, model_dir: Path, entry: dict[str, Any]) -> None:
        """Time the exported files in ``model_dir`` in a child of their own; record and write."""
        start = time.perf_counter()
        child = _run_child(_mp_context(), measure_model, (model_dir, self.exporters, self.timing), self.args.timeout)
        measured_path = model_dir / MEASURE_RESULT
        measured = json.loads(measured_path.read_text()) if measured_path.exists() else {
            "ok": False, "error": f"timing child died (exit {child.exitcode}, timed out {child.timed_out})"}
        entry.update(measured=measured, rows=summarize(measured), timing_s=time.perf_counter() - start)
        self.finish(name, model_dir, entry)

    def finish(self, name: str, model_dir: Path, entry: dict[str, Any]) -> None:
        self.models[name] = entry
        _print_model(name, entry)
        if not self.args.keep_onnx:
            shutil.rmtree(model_dir, ignore_errors=True)
        self.write()

    def run_issue_case(self) -> None:
        """The issue's 4-layer BERT, with transformers' initialisation (as measured there) and filled."""
        for fill in (False, True):
            name = f"{issue_case.NAME} ({'filled' if fill else 'zero biases, as in the issue'})"
            print(name, flush=True)
            model_dir = self.work_dir / ("issue_filled" if fill else "issue_zero")
            model_dir.mkdir(parents=True, exist_ok=True)
            _run_child(_mp_context(), issue_case.prepare,
                       (model_dir, self.exporters, self.timing.batches, self.args.seed, fill), self.args.timeout)
            self.time_model(name, model_dir, {"export": issue_case.export_rows(model_dir, self.exporters)})

    def write(self) -> None:
        bundle = {"meta": self.meta, "models": self.models}
        write_text_atomic(self.out_dir / "latency.json", json.dumps(bundle, indent=1, default=str))
        write_text_atomic(self.out_dir / "latency.md", "\n".join(markdown(bundle)) + "\n")


def _ratio_text(r: dict[str, Any] | None) -> str:
    if not r:
        return "–"
    flag = " **slower**" if r["p25"] > 1.0 else ""
    wrong = "" if r["status"] == "ok" else " (wrong!)"
    return f"{r['ratio']:.3f} [{r['p25']:.2f}, {r['p75']:.2f}]{flag}{wrong}"


def _table_rows(models: dict[str, Any], exporters: Sequence[str], tuned: bool) -> list[list[str]]:
    body = []
    for name, entry in models.items():
        if not entry["rows"]:
            reason = entry["measured"].get("error") or "no contestant ran"
            body.append([name, "–", *["–"] * len(exporters), "–", "–", *(["–"] if tuned else []), _md_cell(reason, 120)])
            continue
        for row in entry["rows"]:
            ms = [_fmt(row["median_ms"].get(e), ".3g") for e in exporters]
            excluded = "; ".join(f"{e}: {s.split(':')[0]}" for e, s in row["excluded"].items())
            body.append([name, str(row["batch"]), *ms, row["best"] or "none", _ratio_text(row.get(SUBJECT)),
                         *([_ratio_text(row.get(TUNED))] if tuned else []), _md_cell(excluded, 120)])
    return body


def _summary(models: dict[str, Any], subject: str) -> str:
    ratios = [r[subject]["ratio"] for e in models.values() for r in e["rows"] if subject in r]
    slower = [r for e in models.values() for r in e["rows"] if subject in r and r[subject]["p25"] > 1.0]
    if not ratios:
        return f"- {subject}: no comparison"
    geo = statistics.geometric_mean(ratios)
    return (f"- {subject}: {len(ratios)} model-batch pairs; geometric mean of the ratios {geo:.3f}; "
            f"{sum(r <= 1.0 for r in ratios)} at or below 1.0; {len(slower)} slower beyond noise (p25 > 1)")


def markdown(bundle: dict[str, Any]) -> list[str]:
    meta, models = bundle["meta"], bundle["models"]
    exporters = meta["exporters"]
    tuned = meta["timing"]["tuned"]
    names = exporters + ([TUNED] if tuned else [])
    header = ["model", "batch", *[f"{e} ms" for e in names], "best baseline", "fxtrt / best [p25, p75]",
              *([f"{TUNED} / best"] if tuned else []), "baselines left out"]
    t = meta["timing"]
    lines = [
        "# ONNX Runtime latency: fxtrt against the best baseline", "",
        f"`{meta['command']}`; started {meta['started']}, {meta['cpu_count']} CPUs, load average at start "
        f"{meta['load_at_start'][0]:.1f}; ONNX Runtime {meta['versions'].get('onnxruntime')}.",
        *(f"Merged from an earlier run: `{e['command']}`, started {e['started']}." for e in meta.get("earlier_runs", [])),
        "",
        f"Per model and batch: {t['rounds']} interleaved rounds after {t['warmup']} warm-up runs, the order rotating "
        f"each round; in a round each file runs once, or back to back for at least {t['min_slice_ms']:g} ms when it is "
        "faster than that (the same count for every file); the ratio is the median of the per-round ratios to the fastest baseline that matched eager "
        "at that batch, [25th, 75th percentile] of those ratios beside it. **slower**: even the 25th percentile "
        "is above 1. Medians in ms.", "",
        *(_summary(models, s) for s in (SUBJECT, *([TUNED] if tuned else []))), "",
        *_table(header, _table_rows(models, names, tuned)),
    ]
    return lines


def _print_model(name: str, entry: dict[str, Any]) -> None:
    if not entry["rows"]:
        print(f"    no timing: {entry['measured'].get('error', '')[:150]}", flush=True)
    for row in entry["rows"]:
        ms = "  ".join(f"{e} {v:.3g}" for e, v in row["median_ms"].items())
        ratios = "  ".join(f"{s}/best {_ratio_text(row.get(s))}" for s in (SUBJECT, TUNED) if s in row)
        print(f"    batch {row['batch']}: {ms} ms | best {row['best']} | {ratios}", flush=True)


def _print_event(event: ProgressEvent) -> None:
    if event.kind == "model":
        print(f"[{event.index:>2}/{event.total}] {event.model}", flush=True)
    elif event.kind == "skipped":
        print(f"    SKIPPED: {event.reason[:150]}", flush=True)
    elif event.row is not None:
        row = event.row
        print(f"    export {row['exporter']:<12} {row.get('outcome', '?'):<8} {_fmt(row.get('export_s'), '.1f')} s "
              f"{_md_cell(row.get('detail') or '', 100)}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    specs = select_specs(args.models)
    exporters = [e.name for e in select_exporters(args.exporters.split(",") if args.exporters else None)]
    if args.list:
        for spec in specs:
            print(spec.name)
        return 0
    if SUBJECT not in exporters or len(exporters) < 2 or not specs or args.rounds < 1:
        print("need fxtrt, at least one baseline, at least one model (see --list) and --rounds >= 1", file=sys.stderr)
        return 2
    out_dir = args.out or RESULTS_ROOT / f"{dt.date.today().isoformat()}-latency"
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="fxtrt-latency-"))
    run = LatencyRun(args, exporters, out_dir, work_dir)
    print(f"{'the issue case' if args.issue_bert else f'{len(specs)} models'} x {len(exporters)} exporters -> {out_dir}",
          flush=True)
    start = time.perf_counter()
    try:
        if args.issue_bert:
            run.run_issue_case()
        else:
            run_corpus(specs, select_exporters(exporters), _job_settings(args.seed, run.timing.batches), work_dir,
                       timeout_s=args.timeout, keep_onnx=True, on_event=_print_event, on_model_done=run.model_done)
        run.meta["complete"] = True
    except KeyboardInterrupt:
        print("interrupted: writing the results so far", file=sys.stderr)
    finally:
        if not args.keep_onnx:
            shutil.rmtree(work_dir, ignore_errors=True)
    run.meta.update(wall_s=time.perf_counter() - start, load_at_end=os.getloadavg(),
                    finished=dt.datetime.now().isoformat(timespec="seconds"))
    run.write()
    print(f"done in {run.meta['wall_s']:.0f} s; wrote latency.json, latency.md to {out_dir}")
    return 0 if run.meta["complete"] else 130


if __name__ == "__main__":
    sys.exit(main())
