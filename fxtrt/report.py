"""What a compile run did, as JSON (``report.json``) and as text.

Figures only: passes with their changes, the verification table, op counts before and after
cleanup, time per stage, and notes (eval mode, LayerNorm at low opset, skipped stages).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fxtrt.backend.verify import VerifyRow, format_rows
from fxtrt.passes.infra import PassRecord


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
            for c in p.changes:
                where = f" [{c.source}]" if c.source else ""
                out.append(f"    {c.node}{where}: {c.before} -> {c.after}")
        n_before, n_after = sum(self.ops_before.values()), sum(self.ops_after.values())
        out.append(f"ONNX ops: {n_before} before cleanup, {n_after} after")
        out.append("  " + ", ".join(f"{k}={v}" for k, v in self.ops_after.items()))
        if self.verification:
            out.append("verification:")
            out += ["  " + line for line in format_rows(self.verification).splitlines()]
        for name, stage in self.stages.items():
            out.append(f"{name}: " + ", ".join(f"{k}={v}" for k, v in stage.items()))
        out.append("time per stage: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items()))
        for k, v in self.artifacts.items():
            out.append(f"{k}: {v}")
        return "\n".join(out)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float):
        return value
    return repr(value)
