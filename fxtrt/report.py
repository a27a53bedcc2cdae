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
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from fxtrt.backend.verify import VerifyRow, VerifyTime, format_rows
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
    # a bucket set's passes, op counts and I/O per bucket (the top-level fields hold the last bucket's)
    buckets: dict[int, dict[str, Any]] = field(default_factory=dict)
    # how each artifact's stages read as text, from the artifact itself (Artifact.stage_text)
    stage_text: dict[str, Callable[[str, dict], list]] = field(default_factory=dict, repr=False, compare=False)
    # every verification of the compile: its time and its floor (``stages["verify"]``)
    verify_time: VerifyTime = field(default_factory=VerifyTime, repr=False, compare=False)

    def verified_rows(self, rows: Iterable[VerifyRow]) -> None:
        """Rows of one verification, and its time so far as ``stages["verify"]``."""
        self.verification += rows
        self.stages["verify"] = self.verify_time.to_dict()

    def add(self, artifact: "Artifact") -> None:
        """What an artifact adds: its ``stages`` entries (and how they read), and its notes."""
        for name, entry in artifact.record().items():
            self.stages.setdefault(name, {}).update(entry)
            if name in artifact.stage_text:
                self.stage_text[name] = artifact.stage_text[name]
        self.note(artifact.notes)

    def lowered(self, passes: list[PassRecord], ops: tuple[dict[str, int], dict[str, int]], io: dict[str, list[Any]],
                bucket: int | None = None) -> None:
        """What lowering one ONNX model did: its passes, op counts before/after cleanup and I/O, kept
        per bucket for a bucket set (the top-level fields then hold the last bucket's, as before)."""
        self.passes, (self.ops_before, self.ops_after), self.io = passes, ops, io
        if bucket is not None:
            self.buckets[bucket] = {"passes": passes, "ops_before_cleanup": ops[0], "ops_after_cleanup": ops[1],
                                    "io": io}

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
            **({"buckets": {str(b): {**rec, "passes": [p.to_dict() for p in rec["passes"]]}
                            for b, rec in self.buckets.items()}} if self.buckets else {}),
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
        for b, rec in self.buckets.items():  # a bucket set: each bucket's own passes and I/O
            changed = ", ".join(f"{p.name} {len(p.changes)}" for p in rec["passes"] if p.changes) or "no changes"
            out.append(f"  batch {b}: {changed}; " + ", ".join(f"{k}: {v}" for k, v in rec["io"].items()))
        n_before, n_after = sum(self.ops_before.values()), sum(self.ops_after.values())
        out.append(f"ONNX ops: {n_before} before cleanup, {n_after} after")
        out.append("  " + ", ".join(f"{k}={v}" for k, v in self.ops_after.items()))
        if self.verification:
            out.append("verification:")
            out += ["  " + line for line in format_rows(self.verification).splitlines()]
        for name, stage in self.stages.items():
            out += (self.stage_text.get(name) or _STAGE_TEXT.get(name) or _kind_text(name))(name, stage)
        out.append("time per stage: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items()))
        for k, v in self.artifacts.items():
            out.append(f"{k}: {v}")
        return "\n".join(out)


def capture_stage(captured: CapturedGraph, passes: list[PassRecord]) -> dict[str, Any]:
    """Per dim, how it was captured; for a baked dim, the nodes (and lines) trace diffing rewrote."""
    rewritten = [c for p in passes if p.generalizes for c in p.changes]  # the pass that declares it
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


_STAGE_TEXT = {"capture": _capture_text, "serving": _serving_text}  # the stages of no artifact


def _kind_text(name: str) -> Callable[[str, dict], list]:
    """How the artifact kind that writes stage ``name`` words it, for a report whose artifacts
    were not added in this process (one ``fxtrt.load`` read back); else ``key=value``."""
    from fxtrt.artifacts.base import Artifact

    kinds, seen = list(Artifact.__subclasses__()), set()
    while kinds:
        kind = kinds.pop()
        if kind in seen:
            continue
        seen.add(kind)
        if name in kind.stage_text:
            return kind.stage_text[name]
        kinds += kind.__subclasses__()
    return _generic_stage
