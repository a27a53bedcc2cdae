"""Fuzz fxtrt with generated hazard models (:mod:`benchmarks.hazards`) and hold it to its promise.

For every model: ``fxtrt.compile`` returns an artifact that matches eager at sizes compile did
not verify itself (fresh random inputs, compared by the fidelity benchmark's check,
:func:`benchmarks.outcomes.check_output`), or it raises an ``FxtrtError``, with ``.source`` at the
hazard's line where the hazard has one. Anything else is a failure:

    SILENT   compiled, but differs from eager (or a claimed size would not run) at a checked size
    CRASH    an exception that is not an FxtrtError
    TIMEOUT  still running after --timeout seconds
    PARTIAL  a refusal that left files in out_dir's parent, or a pass whose out_dir lacks a file
    REFUSED  an FxtrtError; acceptable only where the generator marked the model unservable
             (a value read from the input; a per-sample loop with a statistic over the batch)

    python -m benchmarks.fuzz --n 500 --seed 0 --jobs 2 --out DIR

The models are drawn by Hypothesis (``--seed``); every failing one is saved as a standalone
``DIR/repros/<id>.py`` and, with ``--shrink``, shrunk by Hypothesis to the fewest blocks that still
fail the same way (``<id>_shrunk.py``; the example database is ``DIR/hypothesis``). Writes
``DIR/fuzz.json`` (``summary``: total, pass, refused, silent, crash, timeout, partial) and
``DIR/fuzz.md``, and prints the outcome counts per block and per dynamic-dim kind.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import importlib.util
import json
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Iterable, Sequence

from benchmarks.hazards import BLOCK_NAMES, ModelSpec, model_specs, render, sub_specs

log = logging.getLogger(__name__)

FAILURES = ("SILENT", "CRASH", "TIMEOUT", "PARTIAL", "REFUSED_UNEXPECTED")
RESULT = "result.json"


# --- generation -------------------------------------------------------------------------------

def generate(n: int, seed: int, max_blocks: int = 4, blocks: Sequence[str] = BLOCK_NAMES) -> list[ModelSpec]:
    """``n`` distinct specs, drawn by Hypothesis from :func:`model_specs` with ``seed``."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hyp_seed

    drawn: list[ModelSpec] = []

    @hyp_seed(seed)
    @settings(max_examples=3 * n + 20, phases=[Phase.generate], database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(model_specs(max_blocks=max_blocks, blocks=tuple(blocks)))
    def collect(spec: ModelSpec) -> None:
        if len(drawn) < n and spec not in drawn:
            drawn.append(spec)

    collect()
    return drawn


# --- the property, for one model (in-process) --------------------------------------------------

def load_model_module(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"fuzz_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_sizes(spec: ModelSpec, verified: Iterable[dict[str, int]]) -> list[dict[str, int]]:
    """Sizes inside the claims that compile did not verify: two batches, the extra dim off its
    verified sizes; verified sizes only where the range holds no other."""
    seen = list(verified)
    points: list[dict[str, int]] = []
    batches: list[int | None] = [None]
    if spec.batch:
        done = {p.get("batch") for p in seen}
        lo, _, hi = spec.batch
        fresh = [b for b in range(lo, hi + 1) if b not in done] or [lo, hi]
        batches = sorted({fresh[0], fresh[-1], fresh[len(fresh) // 2]})
    extras: list[int | None] = [None]
    if spec.extra:
        done = {p.get(spec.extra_kind) for p in seen}
        lo, _, hi = spec.extra
        fresh = [s for s in range(lo, hi + 1) if s not in done] or [lo, hi]
        extras = [fresh[0], fresh[-1], fresh[len(fresh) // 2]]
    for i, b in enumerate(batches):
        point: dict[str, int] = {}
        if b is not None:
            point["batch"] = b
        e = extras[i % len(extras)]
        if e is not None and spec.extra_kind:
            point[spec.extra_kind] = e
        points.append(point)
    return points


def _source_verdict(spec: ModelSpec, model_file: Path, source: str | None, spans: dict[str, tuple[int, int]]) -> str:
    """Where ``.source`` points: "hazard" (a line of a block that reads a value from the input,
    or of any block when none does), "model" (another line of the model file), "elsewhere" or "none"."""
    if not source:
        return "none"
    path, _, line = source.rpartition(":")
    if not line.isdigit() or Path(path).resolve() != model_file.resolve():
        return "elsewhere"
    keys = [k for k, v in zip(spans, spec.variants()) if "read" in v.tags] or list(spans)
    return "hazard" if any(spans[k][0] <= int(line) <= spans[k][1] for k in keys) else "model"


def run_model(spec: ModelSpec, work: Path) -> dict[str, Any]:
    """The property for one model: compile, then the independent check, or the refusal's verdict."""
    import torch

    import fxtrt
    from benchmarks.outcomes import Tolerance, check_output
    from fxtrt.frontend.capture import flatten_outputs

    work.mkdir(parents=True, exist_ok=True)
    rendered = render(spec)
    model_file = work / "model.py"
    model_file.write_text(rendered.text)
    runs = work / "runs"
    runs.mkdir(exist_ok=True)
    out_dir = runs / "out"
    row: dict[str, Any] = {"spec": spec.to_dict(), "label": spec.label(), "dim_kind": spec.dim_kind,
                           "unservable": spec.unservable}
    start = time.perf_counter()
    try:
        module = load_model_module(model_file)
        model = module.build()
        example = module.example()
        with torch.no_grad():
            model(example)
    except Exception as exc:  # the generator's own bug, not fxtrt's
        row.update(outcome="ERROR", detail=f"the generated model does not run eagerly: {type(exc).__name__}: {exc}")
        return row
    try:
        compiled = fxtrt.compile(model, example, out_dir=out_dir, **spec.options())
    except fxtrt.FxtrtError as exc:
        row["wall_s"] = round(time.perf_counter() - start, 2)
        verdict = _source_verdict(spec, model_file, exc.source, rendered.spans)
        row.update(error=type(exc).__name__, message=exc.message.splitlines()[0][:300], source=exc.source,
                   source_at=verdict)
        left = sorted(p.name for p in runs.iterdir())
        if left:
            row.update(outcome="PARTIAL", detail=f"refused, but left {left} next to out_dir")
        elif spec.unservable is None:
            row.update(outcome="REFUSED_UNEXPECTED", detail=f"{type(exc).__name__}: {row['message']}")
        elif "read" in spec.tags and verdict != "hazard":
            row.update(outcome="REFUSED_UNEXPECTED",
                       detail=f"refused a value read without .source at its line (source={exc.source})")
        else:
            row["outcome"] = "REFUSED"
        return row
    except Exception as exc:
        row.update(outcome="CRASH", wall_s=round(time.perf_counter() - start, 2),
                   detail=f"{type(exc).__name__}: {exc}"[:600], traceback=traceback.format_exc()[-3000:])
        return row
    row["wall_s"] = round(time.perf_counter() - start, 2)
    report = compiled.report
    row["artifact"] = "buckets" if compiled.buckets else "dynamic"
    missing = [str(p) for p in report.artifacts.values() if not Path(p).exists()]
    left = sorted(p.name for p in runs.iterdir())
    if missing or left != ["out"]:
        row.update(outcome="PARTIAL", detail=f"missing {missing}, next to out_dir: {left}")
        return row
    points = check_sizes(spec, [r.sizes for r in report.verification])
    row["checked"] = points
    checks = []
    tol = Tolerance()
    for i, sizes in enumerate(points):
        x = module.inputs_at(sizes, i)
        with torch.no_grad():
            want = [t.numpy() for t in flatten_outputs(model(x)) if isinstance(t, torch.Tensor)]
        try:
            got = [torch.as_tensor(t).numpy() for t in flatten_outputs(compiled(x))]
        except Exception as exc:
            checks.append({"sizes": sizes, "ok": False, "reason": f"raised {type(exc).__name__}: {exc}"[:300]})
            continue
        if len(got) != len(want):
            checks.append({"sizes": sizes, "ok": False, "reason": f"{len(got)} outputs, eager has {len(want)}"})
            continue
        results = [check_output(g, w, tol) for g, w in zip(got, want)]
        bad = [r for r in results if not r.ok]
        checks.append({"sizes": sizes, "ok": not bad, "max_abs": max((r.max_abs_err or 0.0) for r in results),
                       "reason": bad[0].reason if bad else ""})
    row["checks"] = checks
    failed = [c for c in checks if not c["ok"]]
    if failed:
        row.update(outcome="SILENT", detail=f"at {failed[0]['sizes']}: {failed[0]['reason']}")
    else:
        row["outcome"] = "PASS"
    return row


# --- running many, each in a child process -----------------------------------------------------

def _child(spec_dict: dict[str, Any], work: str, threads: int) -> None:
    import torch

    log_file = open(Path(work) / "log.txt", "w")  # noqa: SIM115 - the child's output, until it exits
    os.dup2(log_file.fileno(), 1)
    os.dup2(log_file.fileno(), 2)
    torch.set_num_threads(threads)
    logging.basicConfig(stream=log_file, level=logging.WARNING, force=True)
    spec = ModelSpec.from_dict(spec_dict)
    row = run_model(spec, Path(work))
    tmp = Path(work) / (RESULT + ".tmp")
    tmp.write_text(json.dumps(row, default=str))
    os.replace(tmp, Path(work) / RESULT)


def _context() -> Any:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["benchmarks.fuzz_preload"])
    return ctx


def run_many(specs: Sequence[ModelSpec], root: Path, jobs: int = 1, timeout_s: float = 180.0,
             progress: bool = True) -> list[dict[str, Any]]:
    """Run every spec in its own child process, ``jobs`` at a time, each with a deadline."""
    ctx = _context()
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    pending = list(enumerate(specs))
    active: dict[int, tuple[Any, float, Path]] = {}
    rows: dict[int, dict[str, Any]] = {}
    started = time.perf_counter()
    while pending or active:
        while pending and len(active) < jobs:
            i, spec = pending.pop(0)
            work = root / f"m{i:04d}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            proc = ctx.Process(target=_child, args=(spec.to_dict(), str(work), threads), daemon=True)
            proc.start()
            active[i] = (proc, time.perf_counter() + timeout_s, work)
        time.sleep(0.05)
        for i, (proc, deadline, work) in list(active.items()):
            if proc.is_alive() and time.perf_counter() < deadline:
                continue
            if proc.is_alive():
                proc.kill()
                proc.join()
                row = {"spec": specs[i].to_dict(), "label": specs[i].label(), "dim_kind": specs[i].dim_kind,
                       "unservable": specs[i].unservable, "outcome": "TIMEOUT",
                       "detail": f"still running after {timeout_s:.0f} s", "wall_s": timeout_s}
            else:
                proc.join()
                try:
                    row = json.loads((work / RESULT).read_text())
                except (OSError, ValueError):
                    row = {"spec": specs[i].to_dict(), "label": specs[i].label(), "dim_kind": specs[i].dim_kind,
                           "unservable": specs[i].unservable, "outcome": "CRASH",
                           "detail": f"the process died (exit code {proc.exitcode})"}
            row["id"] = f"m{i:04d}"
            rows[i] = row
            del active[i]
            if progress:
                done = len(rows)
                print(f"[{done}/{len(specs)}] {row['id']} {row['outcome']:18s} {row.get('wall_s', 0):6.1f} s  "
                      f"{row['label']}  {row.get('detail', '')[:120]}", flush=True)
    log.info("ran %d models in %.0f s", len(specs), time.perf_counter() - started)
    return [rows[i] for i in range(len(specs))]


# --- shrinking ---------------------------------------------------------------------------------

def shrink(row: dict[str, Any], root: Path, db_dir: Path, timeout_s: float) -> ModelSpec | None:
    """The fewest blocks of ``row``'s model that still fail with the same outcome (Hypothesis
    ``find`` over :func:`sub_specs`, saving to the example database), or None."""
    from hypothesis import HealthCheck, Phase, find, settings
    from hypothesis.database import DirectoryBasedExampleDatabase
    from hypothesis.errors import NoSuchExample

    spec = ModelSpec.from_dict(row["spec"])
    calls = [0]

    def fails_alike(candidate: ModelSpec) -> bool:
        if not candidate.blocks:
            return False
        calls[0] += 1
        got = run_many([candidate], root / f"{row['id']}_shrink{calls[0]}", 1, timeout_s, progress=False)[0]
        return got["outcome"] == row["outcome"]

    try:
        return find(sub_specs(spec), fails_alike, settings=settings(
            max_examples=24, database=DirectoryBasedExampleDatabase(str(db_dir)), deadline=None,
            phases=[Phase.reuse, Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck)))
    except NoSuchExample:
        return None


# --- the report --------------------------------------------------------------------------------

def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    count = collections.Counter(r["outcome"] for r in rows)
    refused = [r for r in rows if r["outcome"] == "REFUSED"]
    return {
        "total": len(rows), "pass": count["PASS"], "refused": count["REFUSED"] + count["REFUSED_UNEXPECTED"],
        "silent": count["SILENT"], "crash": count["CRASH"], "timeout": count["TIMEOUT"], "partial": count["PARTIAL"],
        "refused_expected": count["REFUSED"], "refused_unexpected": count["REFUSED_UNEXPECTED"],
        "refused_with_source": sum(1 for r in refused if r.get("source_at") == "hazard"),
        "refused_without_source": sum(1 for r in refused if r.get("source_at") != "hazard"),
        "generator_errors": count["ERROR"],
        "failures": sum(count[k] for k in FAILURES) + count["ERROR"],
    }


def _kind(r: dict[str, Any]) -> str:
    if r["outcome"] == "REFUSED":
        return "REFUSED+src" if r.get("source_at") == "hazard" else "REFUSED-src"
    return r["outcome"]


KINDS = ("PASS", "REFUSED+src", "REFUSED-src", "REFUSED_UNEXPECTED", "SILENT", "CRASH", "TIMEOUT", "PARTIAL", "ERROR")


def tables(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, int]]]:
    """Outcome counts per block (a model counts once for each block it holds) and per dim kind."""
    per_block: dict[str, collections.Counter] = {b: collections.Counter() for b in BLOCK_NAMES}
    per_dims: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in rows:
        for name in {b[0] for b in r["spec"]["blocks"]}:
            per_block[name][_kind(r)] += 1
        per_dims[r["dim_kind"]][_kind(r)] += 1
    return {"per_block": {k: dict(v) for k, v in per_block.items()},
            "per_dim_kind": {k: dict(v) for k, v in sorted(per_dims.items())}}


def _table(title: str, counts: dict[str, dict[str, int]]) -> list[str]:
    cols = [k for k in KINDS if any(c.get(k) for c in counts.values())] or ["PASS"]
    lines = [f"| {title} | models | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for name, c in counts.items():
        lines.append(f"| {name} | {sum(c.values())} | " + " | ".join(str(c.get(k, 0)) for k in cols) + " |")
    return lines


def markdown(data: dict[str, Any]) -> str:
    s = data["summary"]
    lines = [f"# fxtrt fuzz: {s['total']} generated models (seed {data['seed']})", "",
             f"Command: `{data['command']}`; wall time {data['wall_s']:.0f} s with {data['jobs']} job(s) "
             f"on {data['cpus']} CPU(s).", "",
             "| total | pass | refused (expected) | refused with source at the hazard | refused without | "
             "refused unexpectedly | silent | crash | timeout | partial |",
             "|---|---|---|---|---|---|---|---|---|---|",
             f"| {s['total']} | {s['pass']} | {s['refused_expected']} | {s['refused_with_source']} | "
             f"{s['refused_without_source']} | {s['refused_unexpected']} | {s['silent']} | {s['crash']} | "
             f"{s['timeout']} | {s['partial']} |", ""]
    lines += _table("block", data["tables"]["per_block"]) + [""]
    lines += _table("dynamic dims", data["tables"]["per_dim_kind"]) + [""]
    bad = [r for r in data["rows"] if r["outcome"] in FAILURES + ("ERROR",)]
    if bad:
        lines += ["## Failures", ""]
        for r in bad:
            lines.append(f"- `{r['id']}` {r['outcome']}: {r['label']}: {r.get('detail', '')[:300]} "
                         f"(repro `repros/{r['id']}.py`{', shrunk `repros/' + r['id'] + '_shrunk.py`' if r.get('shrunk') else ''})")
    refusals = collections.Counter((r.get("error"), r.get("unservable")) for r in data["rows"] if r["outcome"] == "REFUSED")
    if refusals:
        lines += ["", "## Refusals (all of models the generator marked unservable)", ""]
        for (err, why), n in refusals.most_common():
            lines.append(f"- {n} × {err} for {why}")
    return "\n".join(lines) + "\n"


def save_repro(spec: ModelSpec, row: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(spec, row.get("checked") or []).text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500, help="how many models to generate")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed")
    parser.add_argument("--jobs", type=int, default=1, help="models compiled at once, one process each")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per model")
    parser.add_argument("--blocks", default="", help="comma-separated block names to draw from (default: all)")
    parser.add_argument("--shrink", type=int, default=3, help="shrink at most this many failures (0: none)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results") / datetime.date.today().isoformat())
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    blocks = tuple(b for b in args.blocks.split(",") if b) or BLOCK_NAMES
    unknown = set(blocks) - set(BLOCK_NAMES)
    if unknown:
        parser.error(f"unknown blocks {sorted(unknown)}; known: {', '.join(BLOCK_NAMES)}")
    start = time.perf_counter()
    specs = generate(args.n, args.seed, blocks=blocks)
    with tempfile.TemporaryDirectory(prefix="fxtrt-fuzz-") as tmp:
        rows = run_many(specs, Path(tmp), args.jobs, args.timeout)
        wall = time.perf_counter() - start
        args.out.mkdir(parents=True, exist_ok=True)
        repros = args.out / "repros"
        shutil.rmtree(repros, ignore_errors=True)
        shrunk = 0
        for row in rows:
            if row["outcome"] not in FAILURES + ("ERROR",):
                continue
            save_repro(ModelSpec.from_dict(row["spec"]), row, repros / f"{row['id']}.py")
            if row["outcome"] != "ERROR" and shrunk < args.shrink:
                shrunk += 1
                small = shrink(row, Path(tmp) / "shrink", args.out / "hypothesis", args.timeout)
                if small is not None:
                    row["shrunk"] = small.to_dict()
                    save_repro(small, row, repros / f"{row['id']}_shrunk.py")
    data = {"summary": summarize(rows), "seed": args.seed, "n": args.n, "jobs": args.jobs, "cpus": os.cpu_count(),
            "wall_s": round(wall, 1), "command": "python -m benchmarks.fuzz " + " ".join(argv or sys.argv[1:]),
            "tables": tables(rows), "rows": rows}
    (args.out / "fuzz.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    (args.out / "fuzz.md").write_text(markdown(data))
    print(markdown(data))
    print(f"wrote {args.out}/fuzz.json and fuzz.md")
    return 0 if data["summary"]["failures"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
