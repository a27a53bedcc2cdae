"""The fp16 stage: every ONNX model of the verified fp32 artifact to fp16, repaired against PyTorch.

Each model (the one model, or every bucket's) goes through :func:`fxtrt.backend.fp16.repair_fp16`
with the feeds it is verified at and the PyTorch model's own float32 outputs as the reference
(the compile's one :class:`ReferenceRunner`), at ``fp16_atol`` / ``fp16_rtol``. Without a
reference (``verify=False``) the default conversion is written unchecked. The result is an
:class:`~fxtrt.artifacts.fp16_model.Fp16Model`, which compile serves from then on.

Example::

    half = convert(fp32_model, reference, Path("out"), settings)
    half.record()["fp16"]["kept_fp32"][0]["source"]   # 'model.py:12'
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx

from fxtrt.artifacts.base import Artifact, ArtifactStage
from fxtrt.artifacts.fp16_model import Fp16Model, Fp16Stage
from fxtrt.artifacts.onnx_model import onnx_file
from fxtrt.backend.cleanup import save_onnx
from fxtrt.backend.fp16 import DEFAULT_FP32_OPS, Fp16Result, KeptNode, convert_to_fp16, repair_fp16
from fxtrt.backend.verify import ReferenceRunner
from fxtrt.compare import Tolerance
from fxtrt.errors import PrecisionError
from fxtrt.frontend.source import onnx_node_source
from fxtrt.settings import Settings

log = logging.getLogger(__name__)


def tolerance_for(settings: Settings) -> Tolerance:
    """The fp16 tolerances, named in every fp16 verification row."""
    atol, rtol = settings.fp16_atol, settings.fp16_rtol
    return Tolerance(atol, rtol, f"fp16 (atol={atol:g}, rtol={rtol:g})", roundoff=False)


def convert(fp32: Artifact, reference: ReferenceRunner | None, directory: Path, settings: Settings) -> Fp16Model:
    """Every ONNX model of ``fp32`` to fp16 in ``directory``, repaired against ``reference`` at the
    points that model is verified at; without a reference (verify=False) converted unchecked."""
    tolerance = tolerance_for(settings)
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
    return Fp16Model(half, fp32, record, tolerance, notes)


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


STAGE = ArtifactStage(
    "fp16", make=lambda src: convert(src.served, src.reference, src.directory, src.settings),
    wanted=lambda settings: settings.precision == "fp16", replaces=True,
)
