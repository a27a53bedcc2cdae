"""Export fidelity over whole model zoos, per exporter, judged against eager; resumable, on Ray.

    python -m benchmarks.zoo --list --sample 200 --seed 0         # what a run would cover
    python -m benchmarks.zoo --sample 200 --seed 0 --jobs 2       # local Ray, 2 workers
    python -m benchmarks.zoo --models timm/resnet18,hf/bert --exporters fxtrt,onnx_dynamo
    python -m benchmarks.zoo --zoo timm --address auto --out DIR  # a Ray cluster (ray://host:10001 too)
    python -m benchmarks.zoo --report DIR                         # tables and figure again

Writes DIR/zoo.sqlite (every cell), DIR/zoo.md (tables) and DIR/zoo.png (figure); DIR defaults to
benchmarks/results/<date>-zoo. A rerun into the same DIR skips finished cells; --retry-failed
reruns every stored cell whose outcome is not PASS. The last line printed is always
``cells: N run, M skipped (done before), K timed out``. See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from benchmarks.exporters import EXPORTERS, select_exporters
from benchmarks.zoo import catalog
from benchmarks.zoo.store import STORE_NAME, ResultStore, to_do

RESULTS_ROOT = Path(__file__).resolve().parents[1] / "results"
log = logging.getLogger("benchmarks.zoo")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.zoo", description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", default=",".join(catalog.ZOOS), help="comma-separated zoos (default: all four)")
    p.add_argument("--models", help="comma-separated ids (timm/resnet18), globs (timm/resnet*) or package.module:factory")
    p.add_argument("--sample", type=int, help="a seeded sample of N models, stratified by zoo")
    p.add_argument("--seed", type=int, default=0, help="the sample's seed, and the models' and inputs' (default 0)")
    p.add_argument("--exporters", help=f"comma-separated subset of {','.join(EXPORTERS)} (default: all)")
    p.add_argument("--jobs", type=int, help="workers: models at a time (default: CPUs with Ray, 1 without)")
    p.add_argument("--address", help="a Ray cluster: 'auto' or 'ray://host:10001' (default: local Ray)")
    p.add_argument("--no-ray", action="store_true", help="run in this process, one model at a time")
    p.add_argument("--out", type=Path, help="output directory (default benchmarks/results/<date>-zoo)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per step (prepare, cell) before it is killed")
    p.add_argument("--mem-cap-gb", type=float, default=8.0, help="resident memory per step before it is killed (OOM)")
    p.add_argument("--retry-failed", action="store_true", help="rerun stored cells whose outcome is not PASS")
    p.add_argument("--latency-rounds", type=int, default=15,
                   help="at most this many interleaved ORT rounds per model at batch 1 (within 10 s, at least 3)")
    p.add_argument("--keep-work", action="store_true", help="keep the work directory (ONNX files, logs)")
    p.add_argument("--list", action="store_true", help="list the selected models and exit")
    p.add_argument("--report", type=Path, metavar="DIR", help="write DIR's tables and figure from its store, and exit")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def select(args: argparse.Namespace) -> tuple[list[catalog.Entry], dict[str, int]]:
    """The catalog entries a run covers (--zoo, then --models, then --sample), and each listed zoo's size."""
    zoos = [z.strip() for z in args.zoo.split(",") if z.strip()]
    if args.models:
        items = [p.strip() for p in args.models.split(",") if p.strip()]
        given = catalog.named(items)
        if given is not None and args.sample is None:
            return given, {}
        prefixes = {p.split("/")[0] for p in items if not catalog.is_factory(p)}
        zoos = [z for z in zoos if z in prefixes] if prefixes <= set(catalog.ZOOS) else zoos
    entries = catalog.list_zoos(zoos)
    sizes = dict(Counter(e.zoo for e in entries))
    if args.models:
        entries = catalog.pick(entries, args.models)
    if args.sample is not None:
        entries = catalog.sample(entries, args.sample, args.seed)
    return entries, sizes


def print_list(entries: Sequence[catalog.Entry]) -> None:
    for e in entries:
        print(f"{e.id:<60} {e.family}")
    counts = Counter(e.zoo for e in entries)
    print(f"{len(entries)} models: " + ", ".join(f"{z} {counts[z]}" for z in (*catalog.ZOOS, catalog.MODULE_ZOO) if counts[z]))


def _mode(args: argparse.Namespace) -> tuple[bool, int] | str:
    """(use Ray, jobs), or the error to print."""
    from benchmarks.zoo.execute import ray_available

    ray_ok = ray_available() and not args.no_ray
    jobs = args.jobs or ((os.cpu_count() or 1) if ray_ok else 1)
    if jobs < 1:
        return "--jobs must be at least 1"
    if not ray_ok and (jobs > 1 or args.address):
        why = "--no-ray was given" if args.no_ray else "Ray is not installed (pip install -e '.[zoo]')"
        return f"--jobs {jobs}{' with --address' if args.address else ''} needs Ray, but {why}"
    return ray_ok, jobs


def _meta(args: argparse.Namespace, entries: Sequence[catalog.Entry], exporters: Sequence[str], jobs: int, ray_ok: bool,
          sizes: dict[str, int]) -> dict[str, Any]:
    from benchmarks.zoo.job import versions

    return {"zoo_sizes": sizes, "command": " ".join(["python -m benchmarks.zoo", *sys.argv[1:]]), "models": len(entries),
            "zoos": sorted({e.zoo for e in entries}), "exporters": list(exporters), "jobs": jobs,
            "ray": ray_ok, "address": args.address, "seed": args.seed, "sample": args.sample,
            "timeout_s": args.timeout, "mem_cap_gb": args.mem_cap_gb, "host": platform.node(),
            "cpu_count": os.cpu_count(), "versions": versions()}


class Recorder:
    """Commits each event to the store, logs progress, and counts what the final line says."""

    def __init__(self, store: ResultStore, run_id: int, total: int) -> None:
        self.store, self.run_id, self.total = store, run_id, total
        self.ran, self.timed_out = 0, 0
        self.reported: dict[str, set[str]] = {}

    def on_event(self, job: Any, event: dict[str, Any]) -> None:
        if event["kind"] == "latency":
            self.store.set_latency(event["model"], event["ms"], event.get("min_ms", {}), event["rounds"])
            return
        row = event["row"]
        self.store.add_cell(row, self.run_id)
        self.reported.setdefault(job.model_id, set()).add(row["exporter"])
        self.ran += 1
        self.timed_out += row.get("outcome") == "TIMEOUT"
        detail = (row.get("detail") or "").replace("\n", " ")[:140]
        log.info("[%d/%d] %s %s %s %.1f s %s", self.ran, self.total, row["model"], row["exporter"],
                 row.get("outcome"), row.get("cell_s") or 0.0, detail)

    def on_lost(self, job: Any, reason: str) -> None:
        """The job's task died: its unreported cells are ERROR (the harness, not the exporter)."""
        for exporter in job.exporters:
            if exporter not in self.reported.get(job.model_id, set()):
                row = {"model": job.model_id, "zoo": job.zoo, "family": job.family, "exporter": exporter,
                       "outcome": "ERROR", "detail": f"the job's task was lost: {reason}", "error_type": "TaskLost"}
                self.on_event(job, {"kind": "cell", "row": row})


def _jobs(entries: Sequence[catalog.Entry], cells: Sequence[tuple[str, str]]) -> list[Any]:
    from benchmarks.zoo.job import ModelJob

    wanted: dict[str, list[str]] = {}
    for model, exporter in cells:
        wanted.setdefault(model, []).append(exporter)
    return [ModelJob(e.id, e.zoo, e.family, tuple(wanted[e.id])) for e in entries if e.id in wanted]


def work_dir(out: Path) -> Path:
    """Where a run into ``out`` keeps ONNX files and logs: outside the repo (results/ is committed), and
    named after ``out``, so a rerun clears what a killed run left behind."""
    digest = hashlib.blake2b(str(out.resolve()).encode(), digest_size=5).hexdigest()
    return Path(tempfile.gettempdir()) / f"fxtrt-zoo-{digest}"


def _config(args: argparse.Namespace, entries: Sequence[catalog.Entry], out: Path) -> Any:
    from benchmarks.worker import JobSettings
    from benchmarks.zoo.isolate import Limits
    from benchmarks.zoo.job import RunConfig

    work = work_dir(out)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    settings = JobSettings(seed=args.seed, batches=(1, 3), latency_batches=(), batch_profile=(1, 2, 4))
    zoos = tuple(sorted({e.zoo for e in entries}))
    return RunConfig(settings, Limits(args.timeout, args.mem_cap_gb * 1024), str(work), args.keep_work,
                     args.latency_rounds, zoos)


def _execute(args: argparse.Namespace, jobs: Sequence[Any], config: Any, recorder: Recorder, ray_ok: bool, n: int) -> int:
    """Run the jobs on Ray or in this process; returns the cores they had."""
    from benchmarks.zoo import execute

    if ray_ok and jobs:
        return execute.run_on_ray(jobs, config, recorder.on_event, recorder.on_lost, address=args.address, num_cpus=n)
    return execute.run_in_process(jobs, config, recorder.on_event, recorder.on_lost)


def run(args: argparse.Namespace, entries: Sequence[catalog.Entry], sizes: dict[str, int], exporters: Sequence[str],
        out: Path) -> int:
    """Run every cell not stored yet (or not PASS, with --retry-failed); always end with the cells line."""
    mode = _mode(args)
    if isinstance(mode, str):
        print(mode, file=sys.stderr)
        return 2
    ray_ok, jobs = mode
    store = ResultStore(out / STORE_NAME)
    cells, skipped = to_do(store.finished(), [(e.id, x) for e in entries for x in exporters], args.retry_failed)
    model_jobs = _jobs(entries, cells)
    if not ray_ok:
        print("running without Ray: one model at a time in this process, each step in its own child process",
              file=sys.stderr)
    run_id = store.start_run(_meta(args, entries, exporters, jobs, ray_ok, sizes))
    recorder = Recorder(store, run_id, len(cells))
    config = _config(args, entries, out)
    log.info("%d cells to run (%d models), %d done before; work in %s", len(cells), len(model_jobs), skipped, config.work_root)
    start, interrupted, cores = time.perf_counter(), False, jobs
    try:
        cores = _execute(args, model_jobs, config, recorder, ray_ok, jobs)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: the cells in flight are lost, every finished one is stored", file=sys.stderr)
    finally:
        store.finish_run(run_id, {"ran": recorder.ran, "skipped": skipped, "timed_out": recorder.timed_out,
                                  "wall_s": time.perf_counter() - start, "interrupted": interrupted, "cores": cores})
        if not args.keep_work:
            shutil.rmtree(config.work_root, ignore_errors=True)
        _write_report(out, store)
        store.close()
        print(f"cells: {recorder.ran} run, {skipped} skipped (done before), {recorder.timed_out} timed out", flush=True)
    return 130 if interrupted else 0


def _write_report(out: Path, store: ResultStore) -> None:
    from benchmarks.zoo.tables import write_report

    try:
        written = write_report(out, store)
        print(f"wrote {', '.join(p.name for p in written)} to {out}")
    except Exception:  # noqa: BLE001 - the store holds everything; --report DIR renders it again
        log.exception("writing the report failed; the results are in %s", store.path)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if args.report:
        if not (args.report / STORE_NAME).exists():
            print(f"no {STORE_NAME} in {args.report}", file=sys.stderr)
            return 2
        store = ResultStore(args.report / STORE_NAME)
        _write_report(args.report, store)
        return 0
    try:
        entries, sizes = select(args)
        exporters = [e.name for e in select_exporters(args.exporters.split(",") if args.exporters else None)]
    except (KeyError, ValueError) as exc:
        print(exc.args[0], file=sys.stderr)
        return 2
    if args.list:
        print_list(entries)
        return 0
    if not entries:
        print("no model selected (try --list)", file=sys.stderr)
        return 2
    return run(args, entries, sizes, exporters, args.out or RESULTS_ROOT / f"{dt.date.today().isoformat()}-zoo")


if __name__ == "__main__":
    sys.exit(main())
