"""The fp16 twin of an ONNX artifact, repaired against the fp32 PyTorch model: the record.

How it is made is the fp16 stage (:mod:`fxtrt.stages.fp16`): each ONNX model of the verified fp32 artifact (the model, or every bucket's) goes through
:func:`fxtrt.backend.fp16.repair_fp16` with the feeds it is verified at and the PyTorch model's
own float32 outputs as the reference (from the compile's one :class:`ReferenceRunner`), at the
fp16 tolerances (``fp16_atol`` / ``fp16_rtol``, 1e-2 by default). Every node that stays float32
is reported with the user's ``file:line`` (from the ``pkg.torch.onnx.stack_trace`` metadata that
torch.onnx writes and cleanup keeps), and the round that kept it.

Example (what compile() does)::

    half = fxtrt.stages.fp16.convert(fp32_model, reference, Path("out"), settings)
    half.record()["fp16"]["kept_fp32"][0]
    # {'name': 'node_mul_1', 'op_type': 'Mul', 'rule': 'diverged', 'round': 1,
    #  'source': 'model.py:12', 'reason': "produces 'mul_1', whose values reach 9.1e+05, ..."}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from polygraphy.backend.base import BaseRunner

from fxtrt.artifacts.base import Artifact
from fxtrt.artifacts.claims import DimClaim
from fxtrt.artifacts.onnx_model import onnx_entries
from fxtrt.backend.fp16 import Fp16Result
from fxtrt.backend.verify import VerifyRow, format_rows
from fxtrt.compare import Tolerance
from fxtrt.errors import PrecisionError


@dataclass
class Fp16Stage:
    """The fp16 models written (one, or one per bucket) and what the repair did for each."""

    results: dict[int | None, Fp16Result] = field(default_factory=dict)
    sources: dict[int | None, dict[str, str | None]] = field(default_factory=dict)
    paths: dict[int | None, Path] = field(default_factory=dict)
    repaired: bool = True

    def kept(self) -> list[dict[str, Any]]:
        out = []
        for key, result in self.results.items():
            for k in result.kept:
                entry = {"name": k.name, "op_type": k.op_type, "rule": k.rule, "round": k.round,
                         "source": self.sources[key].get(k.name), "outputs": list(k.outputs), "reason": k.reason}
                if key is not None:
                    entry = {"bucket": key, **entry}
                out.append(entry)
        return out

    def to_dict(self) -> dict[str, Any]:
        rounds = []
        for key, result in self.results.items():
            for r in result.rounds:
                d = r.to_dict()
                rounds.append({"bucket": key, **d} if key is not None else d)
        first = next(iter(self.results.values()))
        return {
            "passed": all(r.passed for r in self.results.values()),
            "repaired": self.repaired,
            "atol": first.atol, "rtol": first.rtol,
            "models": [p.name for p in self.paths.values()],
            "kept_fp32": self.kept(),
            "rounds": rounds,
        }


class Fp16Model(Artifact):
    """An fp16 ONNX artifact (one model, or a bucket set of fp16 models), the fp32 artifact it was
    made from, and the repair record. It serves and is verified exactly as ``half`` is."""

    def __init__(self, half: Artifact, fp32: Artifact, record: Fp16Stage,
                 tolerance: Tolerance, notes: Sequence[str] = ()) -> None:
        self.half = half
        self.fp32 = fp32
        self.name = half.name
        self.repair = record
        self.tolerance = tolerance
        self.notes = tuple(notes)
        self.input_names = half.input_names
        self.output_names = half.output_names
        self.points = half.points

    @property
    def files(self) -> tuple[Path, ...]:
        return self.half.files

    @property
    def primary(self) -> Path:
        return self.half.primary

    def runner(self) -> BaseRunner:
        return self.half.runner()

    def serves(self, sizes: Mapping[str, int]) -> bool:
        return self.half.serves(sizes)

    def describe(self, sizes: Mapping[str, int]) -> str:
        return self.half.describe(sizes)

    def claimed(self) -> tuple[DimClaim, ...]:
        return self.half.claimed()

    def members(self) -> dict[int | None, Artifact]:
        return self.half.members()

    def moved_to(self, directory: Path) -> "Fp16Model":
        return Fp16Model(self.half.moved_to(directory), self.fp32.moved_to(directory), self.repair, self.tolerance,
                         self.notes)

    def check(self, rows: Sequence[VerifyRow], divergence: Any = None) -> None:
        bad = [r for r in rows if not r.passed]
        if bad:
            atol, rtol = self.tolerance.atol, self.tolerance.rtol
            raise PrecisionError(
                f"the fp16 model passed its repair but not verification at {len(bad)} of {len(rows)} checks "
                f"(|a-b| <= {atol:g} + {rtol:g}*|ref|):\n{format_rows(rows)}",
                rows=list(rows), hint="relax fp16_atol / fp16_rtol, or keep this model in fp32",
            )

    def index(self) -> dict[str, Path]:
        out = self.half.index()
        for key, m in self.fp32.members().items():
            out.update(onnx_entries("onnx_fp32" if key is None else f"onnx_fp32_b{key}", m.primary))
        return out

    def record(self) -> dict[str, dict[str, Any]]:
        return {"fp16": self.repair.to_dict()}

    stage_text = {"fp16": lambda name, stage: fp16_text(name, stage)}

    def __repr__(self) -> str:
        return f"Fp16Model({self.half!r})"


def fp16_text(name: str, stage: dict[str, Any]) -> list[str]:
    """The report's text for ``stages["fp16"]``: the verdict, each node kept in fp32 and each round."""
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
