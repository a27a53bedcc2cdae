"""What a compile run did, as JSON (``report.json``) and as text.

Figures only: passes with their changes, the verification table, op counts before and after
cleanup, time per stage, and notes (eval mode, LayerNorm at low opset, skipped stages).
"""
from __future__ import annotations

import json
import logging
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from fxtrt.backend.verify import VerifyRow, format_rows
from fxtrt.frontend.capture import TRACE_DIFF, CapturedGraph
from fxtrt.passes.infra import PassRecord

if TYPE_CHECKING:
    from fxtrt.artifacts.base import Artifact

log = logging.getLogger("fxtrt")


@dataclass
class Report:
    model: str
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    passes: list[PassRecord] = field(default_factory=list)
    verification: list[VerifyRow] = field(default_factory=list)
    ops_before: dict[str, int] = field(default_factory=dict)
    ops_after: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    io: dict[str, list[Any]] = field(default_factory=dict)

    def add(self, artifact: "Artifact") -> None:
        """What an artifact adds: its ``stages`` entries and its notes."""
        for name, entry in artifact.record().items():
            self.stages.setdefault(name, {}).update(entry)
        self.note(artifact.notes)

    def note(self, notes: Iterable[str]) -> None:
        """Add each note once."""
        self.notes += [n for n in notes if n not in self.notes]

    @contextmanager
    def timed(self, name: str, step: int, total: int, label: str = "") -> Iterator[None]:
        """Log progress and add the time to ``timings[name]`` (summed over bucket models)."""
        what = f"{name} ({label})" if label else name
        log.info("[%d/%d] %s ...", step, total, what)
        start = time.perf_counter()
        elapsed = 0.0
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.timings[name] = self.timings.get(name, 0.0) + elapsed
        log.info("[%d/%d] %s done in %.1fs", step, total, what, elapsed)

    @property
    def verified(self) -> bool:
        return bool(self.verification) and all(r.passed for r in self.verification)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "settings": self.settings,
            "notes": list(self.notes),
            "io": self.io,
            "passes": [p.to_dict() for p in self.passes],
            "verification": [r.to_dict() for r in self.verification],
            "verified": self.verified,
            "ops_before_cleanup": self.ops_before,
            "ops_after_cleanup": self.ops_after,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "stages": self.stages,
            "artifacts": self.artifacts,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, default=_json_default)

    def write(self, path: Path) -> None:
        path.write_text(self.to_json() + "\n")

    def to_text(self) -> str:
        out = [f"fxtrt report: {self.model}"]
        for name, shape in self.io.items():
            out.append(f"  {name}: {shape}")
        if self.notes:
            out.append("notes:")
            out += [f"  - {n}" for n in self.notes]
        out.append("passes:")
        for p in self.passes:
            out.append(f"  {p.name}: {len(p.changes)} change(s) in {p.seconds:.2f}s")
            out += _change_lines(p.changes)
        n_before, n_after = sum(self.ops_before.values()), sum(self.ops_after.values())
        out.append(f"ONNX ops: {n_before} before cleanup, {n_after} after")
        out.append("  " + ", ".join(f"{k}={v}" for k, v in self.ops_after.items()))
        if self.verification:
            out.append("verification:")
            out += ["  " + line for line in format_rows(self.verification).splitlines()]
        for name, stage in self.stages.items():
            out += _STAGE_TEXT.get(name, _generic_stage)(name, stage)
        out.append("time per stage: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items()))
        for k, v in self.artifacts.items():
            out.append(f"{k}: {v}")
        return "\n".join(out)


def capture_stage(captured: CapturedGraph, passes: list[PassRecord]) -> dict[str, Any]:
    """Per dim, how it was captured; for a baked dim, the nodes (and lines) trace diffing rewrote."""
    rewritten = [c for p in passes if p.name == "generalize_batch" for c in p.changes]
    dims = {}
    for name, dc in captured.dims.items():
        rec = dc.to_dict()
        if dc.how == TRACE_DIFF:
            word = re.compile(rf"\b{re.escape(name)}\b")
            rec["nodes"] = [{"node": c.node, "source": c.source} for c in rewritten if word.search(c.after)]
        dims[name] = rec
    return {"traces": captured.exports, "one_capture": captured.program is not None, "dims": dims}


def _change_lines(changes: list, limit: int = 8) -> list[str]:
    """Each change, or for long lists one example per source line with a count (report.json has all)."""
    if len(changes) <= limit:
        return [f"    {c.node}{f' [{c.source}]' if c.source else ''}: {c.before} -> {c.after}" for c in changes]
    groups: dict[str | None, list] = {}
    for c in changes:
        groups.setdefault(c.source, []).append(c)
    lines = []
    for source, group in groups.items():
        c = group[0]
        more = f" (and {len(group) - 1} more like it)" if len(group) > 1 else ""
        lines.append(f"    [{source or 'unknown'}] {c.node}: {c.before} -> {c.after}{more}")
    return lines


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float):
        return value
    return repr(value)


def _generic_stage(name: str, stage: dict[str, Any]) -> list[str]:
    return [f"{name}: " + ", ".join(f"{k}={v}" for k, v in stage.items())]


def _buckets_text(name: str, stage: dict[str, Any]) -> list[str]:
    how = "chosen automatically" if stage.get("automatic") else "as asked"
    out = [f"{name}: one static-batch model per batch size {stage.get('buckets')} ({how})"]
    out.append(f"  why: {stage.get('why')}")
    if stage.get("source"):
        out.append(f"  at: {stage['source']}")
    if stage.get("models"):
        out.append("  models: " + ", ".join(stage["models"].values()))
    if stage.get("serving"):
        out.append(f"  serving: {stage['serving']}")
    return out


def _fp16_text(name: str, stage: dict[str, Any]) -> list[str]:
    kept = stage.get("kept_fp32", [])
    rounds = stage.get("rounds", [])
    state = ("passed" if stage.get("passed") else "FAILED") if stage.get("repaired", True) else "not repaired or verified"
    out = [f"{name}: {state} at atol={stage.get('atol'):g}, rtol={stage.get('rtol'):g} in {len(rounds)} round(s); "
           f"{', '.join(stage.get('models', []))}; {len(kept)} node(s) kept in fp32:"]
    for k in kept:
        bucket = f"b{k['bucket']} " if "bucket" in k else ""
        where = f" [{k['source']}]" if k.get("source") else ""
        out.append(f"  {bucket}{k['name']} ({k['op_type']}){where} {k['rule']}, round {k['round']}: {k['reason']}")
    for r in rounds:
        bucket = f"b{r['bucket']} " if "bucket" in r else ""
        worst = max(r.get("ort_outputs") or r.get("outputs") or [{}], key=lambda o: o.get("max_abs", 0.0))
        figures = f"max_abs {worst.get('max_abs', 0.0):.3g}" + (f", {worst['nonfinite']} inf/nan" if worst.get("nonfinite") else "")
        then = (f"; diverges first at {', '.join(r['first_divergence'])}, keeps {', '.join(r['added']) or 'nothing new'}"
                if not r.get("passed") else "")
        out.append(f"  {bucket}round {r['round']}: {r['fp32_nodes']} fp32 node(s), {figures}, "
                   f"{'ok' if r.get('passed') else 'fails'}{then}")
    return out


def _engines_text(name: str, stage: dict[str, Any]) -> list[str]:
    plan = stage.get("plan", {})
    engines = plan.get("engines", [])
    if stage.get("status") == "built":
        out = [f"{name}: built {len(engines)} TensorRT engine(s) ({stage.get('reason')})"]
    else:
        out = [f"{name}: skipped, {len(engines)} engine(s) planned and none built: {stage.get('reason')}"]
    kind = plan.get("kind")
    split = ", ".join(f"{d} discretised to {v}" for d, v in plan.get("split", {}).items())
    if kind == "split":
        out.append(f"  plan: {plan.get('keep_dynamic')} dynamic, {split}")
    elif kind == "buckets":
        out.append(f"  plan: one static-batch engine per bucket ({split})")
    else:
        out.append(f"  plan: one engine, {plan.get('keep_dynamic') or 'static shapes'}"
                   + (" dynamic" if plan.get("keep_dynamic") else ""))
    width = max((len(e["engine"]) for e in engines), default=0)
    for e in engines:
        out.append(f"  {e['engine']:<{width}}  {e['description']}  (from {e['onnx']})")
    if stage.get("status") == "built":
        out.append(f"  {stage.get('script')}: rebuilds them")
    else:
        out.append(f"  {stage.get('script')}: builds and checks them on a machine with TensorRT 10/11 and a GPU")
    return out


def _capture_text(name: str, stage: dict[str, Any]) -> list[str]:
    out = [f"{name}: {stage.get('traces', 1)} torch.export trace(s)"
           + ("; emitted as captured, with no second torch.export" if stage.get("one_capture") else "")]
    for dim, rec in stage.get("dims", {}).items():
        lo, hi = rec["traced_range"]
        out.append(f"  {dim}: {rec['how']} (traced over {lo}..{hi})")
        if rec.get("why"):
            out.append(f"    why: {rec['why']}")
        for n in rec.get("nodes", [])[:8]:
            where = f" [{n['source']}]" if n.get("source") else ""
            out.append(f"    {n['node']}{where}")
    return out


def _serving_text(name: str, stage: dict[str, Any]) -> list[str]:
    """What calls are served: each input's shape with its dims' claims (``x: [batch 1..32, 3, 224, 224]``)."""
    claims = stage.get("claims", {})
    at = {(site[0], site[1]): d for d in claims.get("dims", []) for site in d.get("sites", [])}

    def axis(i: str, k: int, n: Any) -> str:
        d = at.get((i, k))
        if d is None:
            return str(n)
        top = "" if d.get("max") is None else d["max"]
        return f"{d['name']} {d['min']}..{top}" + (f" step {d['step']}" if d.get("step") else "")

    shapes = [f"{i['name']}: [" + ", ".join(axis(i["name"], k, n) for k, n in enumerate(i["shape"])) + "]"
              for i in claims.get("inputs", [])]
    return [f"serves: {'; '.join(shapes)} (any other size is a ConfigError); outputs "
            f"{', '.join(stage.get('outputs', []))}"]


_STAGE_TEXT = {"capture": _capture_text, "buckets": _buckets_text, "fp16": _fp16_text, "engines": _engines_text,
               "serving": _serving_text}
