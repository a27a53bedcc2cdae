"""The fp16 twin of an ONNX artifact, repaired against the fp32 PyTorch model.

Each ONNX model of the verified fp32 artifact (the model, or every bucket's) goes through
:func:`fxtrt.backend.fp16.repair_fp16` with the feeds it is verified at and the PyTorch model's
own float32 outputs as the reference (from the compile's one :class:`ReferenceRunner`), at the
fp16 tolerances (``fp16_atol`` / ``fp16_rtol``, 1e-2 by default). Every node that stays float32
is reported with the user's ``file:line`` (from the ``pkg.torch.onnx.stack_trace`` metadata that
torch.onnx writes and cleanup keeps), and the round that kept it.

Example (what compile() does)::

    half = Fp16Model.convert(fp32_model, reference, Path("out"), settings)
    half.record()["fp16"]["kept_fp32"][0]
    # {'name': 'node_mul_1', 'op_type': 'Mul', 'rule': 'diverged', 'round': 1,
    #  'source': 'model.py:12', 'reason': "produces 'mul_1', whose values reach 9.1e+05, ..."}
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from polygraphy.backend.base import BaseRunner

from fxtrt.artifacts.base import Artifact
from fxtrt.artifacts.bucket_set import BucketSet
from fxtrt.artifacts.claims import DimClaim
from fxtrt.artifacts.onnx_model import OnnxModel, onnx_file
from fxtrt.backend.cleanup import save_onnx
from fxtrt.backend.fp16 import DEFAULT_FP32_OPS, Fp16Result, KeptNode, convert_to_fp16, repair_fp16
from fxtrt.backend.verify import ReferenceRunner, Tolerance, VerifyRow, format_rows
from fxtrt.errors import PrecisionError
from fxtrt.frontend.source import onnx_node_source
from fxtrt.settings import Settings

log = logging.getLogger(__name__)


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


def node_sources(model: onnx.ModelProto) -> dict[str, str | None]:
    """ONNX node name (as backend/fp16 names it: the name, or ``<Op #i>``) -> the user's file:line."""
    return {(n.name or f"<{n.op_type} #{i}>"): onnx_node_source(n) for i, n in enumerate(model.graph.node)}


def make_fp16(
    fp32_path: Path,
    dest: Path,
    feeds: Sequence[Mapping[str, np.ndarray]],
    references: Sequence[Mapping[str, np.ndarray]] | None,
    *,
    atol: float,
    rtol: float,
    threshold: int,
    stage: Fp16Stage | None = None,
    key: int | None = None,
) -> Fp16Stage:
    """Write the fp16 version of ``fp32_path`` to ``dest``.

    With ``references`` (the PyTorch outputs at ``feeds``) the conversion is repaired until it
    matches them, or PrecisionError names the first diverging node and its source line. Without
    (verify=False) the default conversion is written unchecked.
    """
    stage = stage if stage is not None else Fp16Stage()
    model = onnx.load(str(fp32_path))
    sources = node_sources(model)
    if references is None:
        result = _unchecked(model, convert_to_fp16(model), atol, rtol)
        stage.repaired = False
    else:
        try:
            result = repair_fp16(model, feeds, references, atol=atol, rtol=rtol)
        except PrecisionError as exc:
            raise _with_source(exc, model, sources) from exc
    save_onnx(result.model, dest, threshold)
    stage.results[key] = result
    stage.sources[key] = sources
    stage.paths[key] = dest
    for k in result.kept:
        if k.rule == "diverged":
            log.info("fp16: %s (%s) kept in fp32 [%s]: %s", k.name, k.op_type, sources.get(k.name) or "?", k.reason)
    return stage


def _unchecked(model: onnx.ModelProto, half: onnx.ModelProto, atol: float, rtol: float) -> Fp16Result:
    names = next((p.value for p in half.metadata_props if p.key == "fxtrt.fp32_nodes"), "")
    by_name = {(n.name or f"<{n.op_type} #{i}>"): n for i, n in enumerate(model.graph.node)}
    kept = tuple(
        KeptNode(n, by_name[n].op_type, tuple(v for v in by_name[n].output if v),
                 "kept by the conversion rules (not repaired: verify=False)", 0,
                 "op_type" if by_name[n].op_type in DEFAULT_FP32_OPS else "rules")
        for n in names.split(",") if n in by_name
    )
    return Fp16Result(half, kept, (), False, atol, rtol)


def _with_source(exc: PrecisionError, model: onnx.ModelProto, sources: Mapping[str, str | None]) -> PrecisionError:
    """The repair names the first diverging *value*; add its producer and the user's line."""
    producer = next((n for i, n in enumerate(model.graph.node) if exc.node in n.output), None) if exc.node else None
    name = (producer.name or producer.op_type) if producer is not None else exc.node
    source = onnx_node_source(producer) if producer is not None else None
    err = PrecisionError(exc.message, rows=exc.rows, node=name, source=source or exc.source, hint=exc.hint)
    err.result = getattr(exc, "result", None)  # type: ignore[attr-defined]
    return err


class Fp16Model(Artifact):
    """An fp16 ONNX artifact (one model, or a bucket set of fp16 models), the fp32 artifact it was
    made from, and the repair record. It serves and is verified exactly as ``half`` is."""

    def __init__(self, half: OnnxModel | BucketSet, fp32: OnnxModel | BucketSet, record: Fp16Stage,
                 tolerance: Tolerance, notes: Sequence[str] = ()) -> None:
        self.half = half
        self.fp32 = fp32
        self.repair = record
        self.tolerance = tolerance
        self.notes = tuple(notes)
        self.input_names = half.input_names
        self.output_names = half.output_names
        self.points = half.points

    @staticmethod
    def tolerance_for(settings: Settings) -> Tolerance:
        """The fp16 tolerances, named in every fp16 verification row."""
        atol, rtol = settings.fp16_atol, settings.fp16_rtol
        return Tolerance(atol, rtol, f"fp16 (atol={atol:g}, rtol={rtol:g})", roundoff=False)

    @classmethod
    def convert(cls, fp32: OnnxModel | BucketSet, reference: ReferenceRunner | None, directory: Path,
                settings: Settings) -> "Fp16Model":
        """Every ONNX model of ``fp32`` to fp16 in ``directory``, repaired against ``reference`` at the
        points that model is verified at; without a reference (verify=False) converted unchecked."""
        tolerance = cls.tolerance_for(settings)
        record = Fp16Stage()
        dests: dict[int | None, Path] = {}
        for key, member in fp32.members().items():
            dests[key] = Path(directory) / onnx_file(key, "fp16")
            feeds = reference.feeds(member.points) if reference is not None else []
            refs = reference.outputs(feeds) if reference is not None else None
            make_fp16(member.primary, dests[key], [f for _, f in feeds], refs, atol=tolerance.atol,
                      rtol=tolerance.rtol, threshold=settings.external_data_threshold, stage=record, key=key)
        half = fp32.with_members(dests, name=f"{fp32.name}-fp16", tolerance=tolerance)
        notes = () if reference is not None else ("the fp16 model was neither repaired nor verified (verify=False)",)
        return cls(half, fp32, record, tolerance, notes)

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
        fp32 = {("onnx_fp32" if key is None else f"onnx_fp32_b{key}"): m.primary
                for key, m in self.fp32.members().items()}
        return {**self.half.index(), **fp32}

    def record(self) -> dict[str, dict[str, Any]]:
        return {"fp16": self.repair.to_dict()}

    def __repr__(self) -> str:
        return f"Fp16Model({self.half!r})"
