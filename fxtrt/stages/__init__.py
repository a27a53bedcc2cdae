"""Compile's stages after lowering: the list ``fxtrt.compile`` walks, one entry per artifact kind.

``compile`` lowers the model first (:mod:`fxtrt.stages.lower`: capture → passes → emit → cleanup
→ the ONNX model or bucket set, verified), then walks :data:`STAGES` in order. Each
:class:`~fxtrt.artifacts.base.ArtifactStage` whose ``wanted(settings)`` holds makes its artifact
from a :class:`~fxtrt.artifacts.base.Source` (what compile serves so far, the PyTorch reference,
the staging directory, the settings); compile adds it to the report, verifies it at its points
and lists its files. A new kind is one module (its :class:`~fxtrt.artifacts.base.Artifact` and
its stage) and one line: an entry here, or :func:`register_stage`.

Example::

    STAGES                                   # [fp16.STAGE, engines.STAGE]
    register_stage(ArtifactStage("ort_optimized", make=optimize))   # after the others
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

from fxtrt.artifacts.base import Artifact, ArtifactStage
from fxtrt.backend.verify import ReferenceRunner, VerifyRow, verify
from fxtrt.errors import ConfigError
from fxtrt.report import Report
from fxtrt.stages import engines, fp16

log = logging.getLogger(__name__)

STAGES: list[ArtifactStage] = [
    fp16.STAGE,     # model_fp16.onnx, repaired against PyTorch; compile serves it from then on
    engines.STAGE,  # TensorRT engines for what compile serves: planned always, built where TensorRT is
]


def register_stage(stage: ArtifactStage, *, before: str | None = None) -> Callable[[], None]:
    """Add ``stage`` to :data:`STAGES`, at the end or before the stage named ``before``; returns
    the call that removes it again (for a test, or a plugin that is switched off)."""
    names = [s.name for s in STAGES]
    if stage.name in names:
        raise ConfigError(f"a stage named {stage.name!r} is already registered", hint=f"the stages are {names}")
    if before is not None and before not in names:
        raise ConfigError(f"register_stage: no stage named {before!r}; the stages are {names}")
    STAGES.insert(names.index(before) if before is not None else len(STAGES), stage)
    return lambda: STAGES.remove(stage) if stage in STAGES else None


def wanted(settings: Any) -> list[ArtifactStage]:
    """The stages this compile runs, in order."""
    return [s for s in STAGES if s.wanted(settings)]


def settle(artifact: Artifact, rows: Sequence[VerifyRow], report: Report, divergence: Any = None) -> Artifact:
    """The artifact as the rows leave it (it may serve less), its rows in the report, its error if one failed."""
    artifact, rows = artifact.settle(rows)
    report.add(artifact)
    report.verified_rows(rows)
    artifact.check(rows, divergence)
    return artifact


def verified(artifact: Artifact, reference: ReferenceRunner, report: Report) -> Artifact:
    """``artifact`` verified against the compile's one reference at its own points and tolerance."""
    rows = verify(artifact, reference, artifact.points, artifact.tolerance, report.verify_time)
    return settle(artifact, rows, report)


__all__ = ["STAGES", "ArtifactStage", "register_stage", "settle", "verified", "wanted"]
