"""Fuzz fxtrt with generated hazard models (:mod:`benchmarks.hazards`) and hold it to its promise.

For every model: ``fxtrt.compile`` returns an artifact that matches eager at sizes compile did
not verify itself (fresh random inputs, compared by the fidelity benchmark's check,
:func:`benchmarks.outcomes.check_output`), or it raises an ``FxtrtError``, with ``.source`` at the
hazard's line where the hazard has one. The artifact serves exactly what it claims
(``compiled.claims``), which must hold what the options declared: at the edges (batch max + 1,
min - 1, a dim one past its range, another size on a static axis, H != W) a call outside the
claims raises ``fxtrt.ConfigError`` and a call inside them (H != W when H and W were declared
independently) matches eager. And compile leaves the model as it found it: its state, and its
outputs against a twin built the same way that compile never saw. Anything else is a failure:

    SILENT     compiled, but at a checked size: differs from eager, or a claimed size would not
               run, or a size outside the claims was served or raised another error than
               ConfigError, or the claims do not hold a declared size where eager runs
    CRASH      an exception that is not an FxtrtError, from compile or from a compiled(...) call
    CORRUPTED  compile (served or refused) changed the model: an attribute, a parameter, a buffer
               or a hook table differs from before compile, or its outputs differ from its twin's
    TIMEOUT    still running after --timeout seconds
    PARTIAL    a refusal that left files in out_dir's parent, or a pass whose out_dir lacks a file
    REFUSED    an FxtrtError; acceptable only where the generator marked the model unservable
               (a value read from the input; a per-sample loop with a statistic over the batch)

    python -m benchmarks.fuzz --n 500 --seed 0 --jobs 2 --out DIR

The models are drawn by Hypothesis (``--seed``); every failing one is saved as a standalone
``DIR/repros/<id>.py`` and, with ``--shrink``, shrunk by Hypothesis to the fewest blocks that still
fail the same way (``<id>_shrunk.py``; the example database is ``DIR/hypothesis``). Writes
``DIR/fuzz.json`` (``summary``: total, pass, refused, silent, crash, corrupted, timeout, partial)
and ``DIR/fuzz.md``, and prints the outcome counts per block and per dynamic-dim kind.
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
import random
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Iterable, Sequence

from benchmarks.hazards import BLOCK_NAMES, ModelSpec, model_specs, piece_counts, render, sub_specs

log = logging.getLogger(__name__)

FAILURES = ("SILENT", "CRASH", "CORRUPTED", "TIMEOUT", "PARTIAL", "REFUSED_UNEXPECTED")
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


AXIS_KEYS = {"seq": {0: "batch", 1: "seq"}, "img": {0: "batch", 2: "h", 3: "w"}}  # the keys of inputs_at's sizes


def sizes_by_axis(layout: str, claims: Any, sizes: dict[str, int]) -> dict[str, int]:
    """A verification row's sizes, keyed by dim name (``x_dim2``, ``hw``), keyed by axis instead:
    ``batch``, ``seq``, ``h``, ``w`` (through the sites of ``claims.dims``)."""
    keys = AXIS_KEYS[layout]
    out: dict[str, int] = {}
    for d in claims.dims:
        if d.name in sizes:
            out.update({keys[axis]: sizes[d.name] for _, axis in d.sites if axis in keys})
    return out


def check_sizes(spec: ModelSpec, verified: Iterable[dict[str, int]]) -> list[dict[str, int]]:
    """Sizes inside the claims that compile did not verify: two batches, the extra dim off its
    verified sizes (``verified`` keyed by axis: :func:`sizes_by_axis`); verified sizes only where
    the range holds no other. H and W declared independent differ (W drawn from the fresh sizes
    with the spec's seed, so a sweep covers many pairs); else they are equal."""
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
        keys = ("seq",) if spec.extra_kind == "seq" else ("hw", "h", "w")
        done = {p.get(k) for p in seen for k in keys}
        lo, _, hi = spec.extra
        fresh = [s for s in range(lo, hi + 1) if s not in done] or [lo, hi]
        extras = [fresh[0], fresh[-1], fresh[len(fresh) // 2]]
    pick = random.Random(spec.seed)
    for i, b in enumerate(batches):
        point: dict[str, int] = {}
        if b is not None:
            point["batch"] = b
        e = extras[i % len(extras)]
        if e is not None and spec.extra_kind == "hw" and spec.hw_independent:
            point.update(h=e, w=pick.choice([s for s in fresh if s != e] or fresh))
        elif e is not None and spec.extra_kind:
            point[spec.extra_kind] = e
        points.append(point)
    return points


def edge_sizes(spec: ModelSpec) -> list[dict[str, int]]:
    """Sizes at the edges of the declaration: one past each dynamic dim's range (max + 1, and
    min - 1 where that is >= 1; no steps are declared), another size on a static axis, and H != W
    inside the ranges (inside the declaration when H and W are independent, outside it when they
    share one name). Other axes stay at the example's sizes."""
    points: list[dict[str, int]] = []
    if spec.batch:
        lo, _, hi = spec.batch
        points += [{"batch": hi + 1}] + ([{"batch": lo - 1}] if lo > 1 else [])
    else:
        points.append({"batch": spec.example_shape()[0] + 1})
    key = spec.extra_kind or ("seq" if spec.layout == "seq" else "hw")
    if not spec.extra:
        points.append({key: spec.static_extra + 1} if spec.layout == "seq" else {"w": spec.static_extra + 1})
        return points
    lo, _, hi = spec.extra
    if spec.layout == "img" and spec.hw_independent:
        points += [{"h": hi + 1}] + ([{"w": lo - 1}] if lo > 1 else [])
    else:
        points += [{key: hi + 1}] + ([{key: lo - 1}] if lo > 1 else [])
    if spec.layout == "img":
        points.append({"h": lo, "w": hi, **({"batch": spec.batch[2]} if spec.batch else {})})
        if spec.hw_independent:
            points.append({"h": hi, "w": lo + 1})
    return points


def outside_claims(claims: Any, shapes: Sequence[tuple[int, ...]]) -> str | None:
    """Why inputs of ``shapes`` are outside ``compiled.claims``, or None when the claims hold
    them: the fuzzer's own reading of the claims (ranges, steps, shared names, static axes), to
    hold ``compiled(...)`` to them."""
    if len(shapes) != len(claims.shapes):
        return f"{len(shapes)} inputs, claimed {len(claims.shapes)}"
    for name, want, got in zip(claims.input_names, claims.shapes, shapes):
        if len(want) != len(got):
            return f"input {name!r} has rank {len(got)}, claimed {len(want)}"
        for axis, (w, g) in enumerate(zip(want, got)):
            if w is not None and w != g:
                return f"input {name!r} axis {axis} is {g}, claimed static {w}"
    for d in claims.dims:
        seen = sorted({shapes[i][a] for i, a in d.sites})
        if len(seen) > 1:
            return f"dim {d.name!r} is {seen} at its sites, claimed one size"
        n = seen[0]
        if n < d.min or (d.max is not None and n > d.max):
            return f"dim {d.name!r} is {n}, claimed {d.min}..{'' if d.max is None else d.max}"
        if d.step and n % d.step:
            return f"dim {d.name!r} is {n}, claimed in steps of {d.step}"
    return None


def _outputs(value: Any) -> list[Any]:
    import torch

    from fxtrt.frontend.capture import flatten_outputs

    return [t.detach().numpy() for t in flatten_outputs(value) if isinstance(t, torch.Tensor)]


def judge_call(spec: ModelSpec, claims: Any, compiled: Any, reference: Any, x: Any, sizes: dict[str, int],
               tol: Any = None) -> dict[str, Any]:
    """One call ``compiled(x)``, held to the claims: inside them it must match ``reference(x)``
    (eager, a model compile never saw); outside them it must raise ``fxtrt.ConfigError``. The
    claims must hold what ``spec`` declared, unless eager cannot run there (torch.export proved two
    declared-independent dims equal). ``outcome`` is "ok", "SILENT" (wrong values, a claimed size
    that would not run, a size served outside the claims, another error than ConfigError outside
    them, claims narrower than declared) or "CRASH" (an exception that is not an FxtrtError)."""
    import torch

    import fxtrt
    from benchmarks.outcomes import Tolerance, check_output

    shape = tuple(int(n) for n in x.shape)
    undeclared, unclaimed = spec.outside(shape), outside_claims(claims, [shape])
    check: dict[str, Any] = {"sizes": sizes, "shape": list(shape), "declared": undeclared is None,
                             "claimed": unclaimed is None}

    def verdict(outcome: str, reason: str = "", **more: Any) -> dict[str, Any]:
        check.update(outcome=outcome, ok=outcome == "ok", reason=reason[:400], **more)
        return check

    def eager() -> Any:
        with torch.no_grad():
            return reference(x)

    try:
        got = compiled(x)
    except fxtrt.FxtrtError as exc:
        raised = f"{type(exc).__name__}: {exc.message.splitlines()[0] if exc.message else ''}"
        check["raised"] = raised[:300]
        if unclaimed is None:
            return verdict("SILENT", f"a claimed size would not run: {raised}")
        if undeclared is None:
            try:
                eager()
            except Exception:  # the model itself cannot run there: a narrower claim is right
                pass
            else:
                return verdict("SILENT", f"declared and eager runs there, but not claimed ({unclaimed}): "
                                         "compile narrowed the declaration")
        if not isinstance(exc, fxtrt.ConfigError):
            return verdict("SILENT", f"outside the claims ({unclaimed}), but raised {raised}, not a ConfigError")
        return verdict("ok")
    except Exception as exc:
        return verdict("CRASH", f"compiled(x) raised {type(exc).__name__}: {exc}",
                       traceback=traceback.format_exc()[-2000:])
    if unclaimed is not None:
        return verdict("SILENT", f"served a size outside its claims ({unclaimed})")
    try:
        want = _outputs(eager())
    except Exception as exc:
        return verdict("SILENT", f"served a claimed size at which eager raises {type(exc).__name__}: {exc}")
    got_arrays = _outputs(got)
    if len(got_arrays) != len(want):
        return verdict("SILENT", f"{len(got_arrays)} outputs, eager has {len(want)}")
    results = [check_output(g, w, tol or Tolerance()) for g, w in zip(got_arrays, want)]
    bad = [r for r in results if not r.ok]
    return verdict("SILENT" if bad else "ok", bad[0].reason if bad else "",
                   max_abs=max((r.max_abs_err or 0.0) for r in results))


# --- what compile must leave alone: the user's model ----------------------------------------------

def _fingerprint(value: Any, depth: int = 0) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return ("tensor", id(value), value.dtype, tuple(value.shape), value.detach().clone())
    if value is None or isinstance(value, (bool, int, float, str, torch.Size)):
        return value
    if depth < 2 and isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_fingerprint(v, depth + 1) for v in value))
    if depth < 2 and isinstance(value, dict):
        return (type(value).__name__, tuple((repr(k), _fingerprint(v, depth + 1)) for k, v in value.items()))
    if isinstance(value, (set, frozenset)):
        return (type(value).__name__, tuple(sorted(map(repr, value))))
    return (type(value).__name__, id(value))


def _same(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        nan_equal = a.is_floating_point() and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)
        return bool(torch.equal(a, b) or nan_equal)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    try:
        return bool(a == b)
    except Exception:  # a comparison that cannot be made (a symbolic size left behind) is a change
        return False


def state_of(model: Any) -> dict[str, Any]:
    """Every attribute of every submodule (``path.attr``): tensors by identity and value,
    containers (the parameter, buffer and hook tables, lists) by their contents, plain values by
    value, other objects by identity. Compile must leave all of it as it found it."""
    return {f"{name or '<model>'}.{k}": _fingerprint(v)
            for name, m in model.named_modules() for k, v in vars(m).items()}


def state_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What differs between two :func:`state_of` snapshots."""
    out = []
    for key in sorted(set(before) | set(after)):
        if key not in after:
            out.append(f"{key} deleted")
        elif key not in before:
            out.append(f"{key} added")
        elif not _same(before[key], after[key]):
            out.append(f"{key} changed")
    return out


def corruption(model: Any, twin: Any, before: dict[str, Any], inputs: Sequence[Any]) -> str | None:
    """Why ``model`` is not as compile found it, or None: its state against ``before``
    (:func:`state_of` just before compile), then its outputs against ``twin``'s (the same model,
    built the same way, never given to compile) at ``inputs``."""
    import numpy as np
    import torch

    changes = state_changes(before, state_of(model))
    if changes:
        return f"compile changed the model: {', '.join(changes[:6])}" + (" ..." if len(changes) > 6 else "")
    for x in inputs:
        shape = list(x.shape)
        with torch.no_grad():
            try:
                want = _outputs(twin(x))
            except Exception:
                continue  # the twin cannot run there either: nothing to compare
            try:
                got = _outputs(model(x))
            except Exception as exc:
                return (f"after compile the model raises at {shape} (its twin does not): "
                        f"{type(exc).__name__}: {exc}")[:400]
        if len(got) != len(want) or any(g.shape != w.shape for g, w in zip(got, want)):
            return f"after compile the model's outputs at {shape} have other shapes than its twin's"
        got, want = [g.astype(np.float64) for g in got], [w.astype(np.float64) for w in want]
        if not all(np.allclose(g, w, rtol=1e-6, atol=1e-6, equal_nan=True) for g, w in zip(got, want)):
            worst = max(float(np.nanmax(np.abs(g - w))) if g.size else 0.0 for g, w in zip(got, want))
            return f"after compile the model's output at {shape} differs from its twin's by {worst:.3g} (max abs)"
    return None


def _pieces_change(spec: ModelSpec, variant: Any) -> bool:
    """A chunk/split block whose number of pieces changes over the drawn range (refused at its line)."""
    if not variant.pieces or not spec.extra:
        return False
    op, k = variant.pieces
    return len(piece_counts(op, k, spec.extra[0], spec.extra[2])) > 1


def _source_verdict(spec: ModelSpec, model_file: Path, source: str | None, spans: dict[str, tuple[int, int]]) -> str:
    """Where ``.source`` points: "hazard" (a line of a block that reads a value from the input or
    chunks a dynamic dim into a changing number of pieces, or of any block when none does), "model" (another line of the model file), "elsewhere" or "none"."""
    if not source:
        return "none"
    path, _, line = source.rpartition(":")
    if not line.isdigit() or Path(path).resolve() != model_file.resolve():
        return "elsewhere"
    keys = [k for k, v in zip(spans, spec.variants()) if "read" in v.tags or _pieces_change(spec, v)] or list(spans)
    return "hazard" if any(spans[k][0] <= int(line) <= spans[k][1] for k in keys) else "model"


def run_model(spec: ModelSpec, work: Path) -> dict[str, Any]:
    """The property for one model: compile, then the checks inside and at the edges of the
    claims (:func:`judge_call`), or the refusal's verdict; either way the model must be as compile
    found it (:func:`corruption`)."""
    import torch

    import fxtrt

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
        example = module.example()
        twin = module.build()  # the reference: built like the model, never given to compile
        model = module.build()
        with torch.no_grad():
            twin(example)
            if spec.warm_up:
                model(example)
    except Exception as exc:  # the generator's own bug, not fxtrt's
        row.update(outcome="ERROR", detail=f"the generated model does not run eagerly: {type(exc).__name__}: {exc}")
        return row
    before = state_of(model)
    compare_at = [module.inputs_at({}, 90), module.inputs_at(check_sizes(spec, [])[-1], 91)]
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
        return _corrupted(row, corruption(model, twin, before, compare_at))
    except Exception as exc:
        row.update(outcome="CRASH", wall_s=round(time.perf_counter() - start, 2),
                   detail=f"{type(exc).__name__}: {exc}"[:600], traceback=traceback.format_exc()[-3000:])
        return _corrupted(row, corruption(model, twin, before, compare_at))
    row["wall_s"] = round(time.perf_counter() - start, 2)
    corrupted = corruption(model, twin, before, compare_at)
    report = compiled.report
    row["artifact"] = "buckets" if compiled.buckets else "dynamic"
    missing = [str(p) for p in report.artifacts.values() if not Path(p).exists()]
    left = sorted(p.name for p in runs.iterdir())
    if missing or left != ["out"]:
        row.update(outcome="PARTIAL", detail=f"missing {missing}, next to out_dir: {left}")
        return _corrupted(row, corrupted)
    claims = compiled.claims
    row["claims"] = claims.dims_dict()
    points = check_sizes(spec, [sizes_by_axis(spec.layout, claims, r.sizes) for r in report.verification])
    edges = edge_sizes(spec)
    row["checked"] = points + edges
    checks = [judge_call(spec, claims, compiled, twin, module.inputs_at(sizes, i), sizes)
              for i, sizes in enumerate(points)]
    checks += [dict(judge_call(spec, claims, compiled, twin, module.inputs_at(sizes, 100 + i), sizes), edge=True)
               for i, sizes in enumerate(edges)]
    row["checks"] = checks
    row["check_s"] = round(time.perf_counter() - start - row["wall_s"], 2)
    failed = [c for c in checks if c["outcome"] == "CRASH"] or [c for c in checks if not c["ok"]]
    if failed:
        row.update(outcome=failed[0]["outcome"], detail=f"at {failed[0]['sizes']}: {failed[0]['reason']}")
        if failed[0]["outcome"] == "CRASH":
            row["traceback"] = failed[0].get("traceback")
    else:
        row["outcome"] = "PASS"
    return _corrupted(row, corrupted)


def _corrupted(row: dict[str, Any], reason: str | None) -> dict[str, Any]:
    """``row`` with the corruption verdict: CORRUPTED outranks every outcome but CRASH."""
    row["corrupted"] = reason
    if reason and row["outcome"] != "CRASH":
        also = f" (and {row['outcome']}: {row['detail']})" if row.get("detail") else f" (and {row['outcome']})"
        row.update(outcome="CORRUPTED", detail=reason + also)
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
    """The fork server's context: it imports :mod:`benchmarks.fuzz_preload` (and warms up) once.

    The server starts with one OpenMP thread, so that its warm-up compile starts no thread team:
    a forked child inherits such a team broken, and hangs in its first parallel op once it asks
    for more threads (``--jobs 1`` on two cores: every model a TIMEOUT)."""
    from multiprocessing import forkserver

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["benchmarks.fuzz_preload"])
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        forkserver.ensure_running()
    finally:
        if saved is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = saved
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
        "silent": count["SILENT"], "crash": count["CRASH"], "corrupted": count["CORRUPTED"],
        "timeout": count["TIMEOUT"], "partial": count["PARTIAL"],
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


KINDS = ("PASS", "REFUSED+src", "REFUSED-src", "REFUSED_UNEXPECTED", "SILENT", "CRASH", "CORRUPTED", "TIMEOUT",
         "PARTIAL", "ERROR")


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
             "refused unexpectedly | silent | crash | corrupted | timeout | partial |",
             "|---|---|---|---|---|---|---|---|---|---|---|",
             f"| {s['total']} | {s['pass']} | {s['refused_expected']} | {s['refused_with_source']} | "
             f"{s['refused_without_source']} | {s['refused_unexpected']} | {s['silent']} | {s['crash']} | "
             f"{s.get('corrupted', 0)} | {s['timeout']} | {s['partial']} |", ""]
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
