"""The engines stage: plan TensorRT engines for the verified ONNX artifact, write the script,
build them where TensorRT and a GPU are usable.

1. check every node against TensorRT 10/11's ONNX parser tables (a warning below 100%, an
   ``EngineError`` with ``strict``);
2. plan the engines (:func:`fxtrt.backend.tensorrt.plan_engines`: one engine, or with more than
   one dynamic dim one engine per value of the dims not kept dynamic; for a bucket set
   :func:`~fxtrt.backend.tensorrt.plan_buckets`: one engine per static-batch model);
3. always write ``build_engines.sh``;
4. build only when :func:`~fxtrt.backend.tensorrt.tensorrt_status` says TensorRT and a CUDA
   device are usable; the :class:`~fxtrt.artifacts.engine_set.EngineSet` is then verifiable.

Example::

    engines = build(onnx_artifact, Path("out"), settings)
    engines.built, engines.record()["engines"]["plan"]["kind"]   # False, "single" (no GPU here)
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from fxtrt.artifacts.base import Artifact, ArtifactStage
from fxtrt.artifacts.engine_set import GPU_HINT, EngineSet, EngineStage
from fxtrt.backend.tensorrt import (
    EnginePlan,
    build_engines,
    plan_buckets,
    plan_engines,
    tensorrt_status,
    write_build_script,
)
from fxtrt.backend.tensorrt.readiness import check_readiness, incomplete, readiness_record, unsupported_error
from fxtrt.backend.tensorrt.specs import tensor_specs
from fxtrt.compare import Tolerance
from fxtrt.settings import Settings
from fxtrt.sizes import bucket_points

log = logging.getLogger(__name__)


def build(source: Artifact, directory: Path, settings: Settings) -> EngineSet:
    """Plan engines for every ONNX model of ``source``, write the script, build if possible.

    A dynamic model is checked at its own points; a bucket set at every bucket, with the other
    dims' extremes at the smallest and largest (each engine takes the points it accepts).
    """
    members = source.members()
    if None in members:
        onnx_paths: Path | dict[int, Path] = members[None].primary
        points = source.points
    else:
        onnx_paths = {b: m.primary for b, m in members.items() if b is not None}
        points = tuple(bucket_points(sorted(onnx_paths), [d for d in settings.dims if not d.is_batch]))
    tolerance = Tolerance(source.tolerance.atol, source.tolerance.rtol)
    readiness = parser_readiness(onnx_paths if isinstance(onnx_paths, Path) else onnx_paths[max(onnx_paths)],
                                 strict=settings.strict)
    stage = run_engine_stage(directory, settings, onnx_paths, atol=tolerance.atol, rtol=tolerance.rtol)
    stage.readiness = readiness
    return EngineSet(stage, source, points, tolerance, directory)


def plan_for(settings: Settings, onnx: Path | Mapping[int, Path]) -> EnginePlan:
    """The engine plan for the dynamic model, or for a bucket set (bucket -> static model)."""
    if isinstance(onnx, Mapping):
        batch = settings.batch
        sites = batch.sites if batch is not None else ()
        largest = onnx[max(onnx)]
        ranges = {d.name: (d.min, d.opt, d.max) for d in settings.dims if not d.is_batch}
        return plan_buckets(dict(onnx), tensor_specs(largest, sites), ranges)
    ranges = {d.name: (d.min, d.opt, d.max) for d in settings.dims}
    return plan_engines(onnx, tensor_specs(onnx), ranges, keep_dynamic=settings.keep_dynamic)


def run_engine_stage(
    out_dir: Path,
    settings: Settings,
    onnx: Path | Mapping[int, Path],
    *,
    atol: float,
    rtol: float,
) -> EngineStage:
    """Plan, write ``build_engines.sh``, and build the engines if TensorRT and a GPU are here."""
    plan = plan_for(settings, onnx)
    script = write_build_script(plan, out_dir, atol=atol, rtol=rtol)
    ok, why = tensorrt_status()
    if not ok:
        log.warning("TensorRT engines not built: %s; %s", why, GPU_HINT)
        return EngineStage(plan, script, "skipped", why)
    built = build_engines(plan, out_dir)
    return EngineStage(plan, script, "built", why, built)


def parser_readiness(onnx_path: Path, *, strict: bool) -> dict[str, Any]:
    """Whether TensorRT 10/11's ONNX parser takes every node (checked without TensorRT, before any
    engine is planned): a warning below 100%, an ``EngineError`` with ``strict``."""
    record = readiness_record(check_readiness(onnx_path))
    for key, r in incomplete(record).items():
        ops = sorted({g["op"] for g in r["unsupported"]})
        log.warning("TensorRT %s's ONNX parser would take %.1f%% of %d nodes; unsupported: %s (report.json "
                    "stages.engines.readiness has each node and line)", key, r["coverage"], r["nodes"], ", ".join(ops))
    error = unsupported_error(record) if strict else None
    if error is not None:
        raise error
    return record


STAGE = ArtifactStage(
    "engines", make=lambda src: build(src.served, src.directory, src.settings),
    wanted=lambda settings: settings.target == "tensorrt",
)
