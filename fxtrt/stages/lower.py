"""The first stage: the model lowered to one dynamic ONNX model, or to a bucket set, and verified.

capture → passes → emit → cleanup is the one pipeline every ONNX file goes through (:func:`lower`):
the dynamic model, and each static model of a bucket set. :func:`lower_artifact` picks which:
a bucket set when ``buckets=`` is given, or by itself when the graph's structure follows the
batch. :func:`check_lowered` verifies it and, on a failure, says where it comes from: the first
ONNX value that leaves the FX graph (a dynamic model), or a model that reads the batch size as
a value (a bucket set).

Example (what compile() does)::

    lowered = lower_artifact(model, inputs, settings, pipeline, report, stage.path, total=6)
    served = check_lowered(lowered, model, inputs, reference, report, total=6)
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from fxtrt.artifacts import Artifact, BucketSet, OnnxModel
from fxtrt.artifacts.claims import stamp_dims
from fxtrt.artifacts.onnx_model import MODEL_FILE, bucket_file
from fxtrt.backend.buckets import BatchSizeRead, batch_size_read, fallback, padding_probe_sizes
from fxtrt.backend.cleanup import cleanup, restore_dim_names, save_onnx
from fxtrt.backend.divergence import graph_verdict
from fxtrt.backend.divergence import trace_divergence as first_divergence
from fxtrt.backend.dynamic_dims import check_dynamic_dims
from fxtrt.backend.emit import dim_names, emit_onnx
from fxtrt.backend.weights import Weights
from fxtrt.frontend.program import exported
from fxtrt.backend.verify import ReferenceRunner, VerifyRow, verify
from fxtrt.debug import PassDebugger
from fxtrt.errors import GeneralizationError, StructureError
from fxtrt.frontend.capture import CapturedGraph, capture
from fxtrt.frontend.guards import check_hole_runs
from fxtrt.frontend.limits import confirmed_step, stepped_limit
from fxtrt.frontend.squeezes import check_squeezes
from fxtrt.frontend.state import ModuleState
from fxtrt.passes import PassContext, PassManager
from fxtrt.report import Report, capture_stage
from fxtrt.settings import Settings
from fxtrt.sizes import inputs_at, unproven_points
from fxtrt.stages import settle

log = logging.getLogger("fxtrt")


@dataclass(frozen=True)
class Lowered:
    """What lowering made: the settings with the dims as captured, the capture, the FX graph that
    was emitted (None for a bucket set: one graph per bucket) and the artifact."""

    settings: Settings
    captured: CapturedGraph
    gm: torch.fx.GraphModule | None
    artifact: Artifact


def lower_artifact(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], settings: Settings,
                   pipeline: Sequence[Any], report: Report, stage_dir: Path, total: int) -> Lowered:
    """The dynamic model, or (asked for, or when the graph's structure follows the batch) a bucket set."""
    if settings.buckets is None:
        try:
            settings, captured, gm = lower(model, inputs, settings, pipeline, report, stage_dir / MODEL_FILE, total)
            return Lowered(settings, captured, gm, OnnxModel.compiled(stage_dir / MODEL_FILE, captured, settings))
        except StructureError as exc:
            if settings.batch is None or (exc.dims and settings.batch.name not in exc.dims):
                raise  # static batches would not help: the structure follows another dim
            buckets, report.stages["buckets"], note = fallback(settings.batch, exc)
            log.warning("the batch can't be dynamic (%s%s); compiling static-batch models for batch %s instead",
                        exc.message, f", at {exc.source}" if exc.source else "", list(buckets))
            report.note([note])
            settings = dataclasses.replace(settings, buckets=buckets)
    return _lower_buckets(model, inputs, settings, pipeline, report, stage_dir, total)


def _lower_buckets(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], settings: Settings,
                   pipeline: Sequence[Any], report: Report, stage_dir: Path, total: int) -> Lowered:
    """One static-batch model per bucket, each through :func:`lower` (no dumps, no pristine copy,
    no capture record: those describe the one dynamic graph), served as one :class:`BucketSet`."""
    batch = settings.batch
    assert batch is not None and settings.buckets is not None
    static = dataclasses.replace(settings, dims=tuple(d for d in settings.dims if not d.is_batch))
    paths: dict[int, Path] = {}
    for b in settings.buckets:
        paths[b] = stage_dir / bucket_file(b)
        static, captured, _ = lower(model, inputs_at(inputs, [batch], {batch.name: b}), static, pipeline, report,
                                    paths[b], total, label=f"batch {b}", bucket=b,
                                    dump_passes=False, keep_pristine=False, record_capture=False)
    settings = dataclasses.replace(settings, dims=(batch, *static.dims))
    report.settings["dims"] = [d.to_dict() for d in settings.dims]
    report.stages.setdefault("buckets", {"buckets": list(settings.buckets), "automatic": False,
                                         "why": "buckets= was given"})
    bucket_set = BucketSet.compiled(paths, captured, settings)
    report.add(bucket_set)
    if settings.debug_dir is not None:
        report.note(["debug_dir: the static bucket models are not dumped pass by pass"])
    return Lowered(settings, captured, None, bucket_set)


def lower(
    model: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    settings: Settings,
    pipeline: Sequence[Any],
    report: Report,
    dest: Path,
    total: int,
    *,
    label: str = "",
    bucket: int | None = None,
    dump_passes: bool = True,
    keep_pristine: bool = True,
    record_capture: bool = True,
) -> tuple[Settings, CapturedGraph, torch.fx.GraphModule]:
    """capture → passes → emit → cleanup → ``dest``. ``label`` only names the progress lines;
    ``dump_passes`` writes ``debug_dir`` dumps, ``keep_pristine`` keeps the graph as captured for
    the verdict on a failure, ``record_capture`` writes ``report.stages["capture"]``, ``bucket``
    keeps this model's passes and I/O under ``report.buckets``. The settings returned hold the
    dims as captured (dims torch.export proves equal are one)."""
    with report.timed("capture", 1, total, label):
        captured = capture(model, inputs, settings)
        check_squeezes(captured.base.gm, settings.dims)
    report.note(captured.notes)
    if captured.declared != settings.dims:
        settings = dataclasses.replace(settings, dims=captured.declared)
        report.settings["dims"] = [d.to_dict() for d in settings.dims]

    with report.timed("passes", 2, total, label):
        pristine = _copy(captured.base.gm) if keep_pristine else None
        debugger = None
        if settings.debug_dir is not None and dump_passes:
            debugger = PassDebugger(settings.debug_dir, model, captured, settings, pristine=pristine)
        manager = PassManager(pipeline, observers=[debugger] if debugger else [],
                              check=debugger.check_step if debugger else None)
        run = manager.run(captured.base.gm, PassContext(settings, captured))
        report.note(n for r in run.records for n in r.notes)  # subgraphs a pass left as captured
        captured = dataclasses.replace(run.captured, pristine=pristine)  # as the passes left it
    if record_capture:
        report.stages["capture"] = capture_stage(captured, run.records)

    with report.timed("emit", 3, total, label):
        program, holes = _exported(model, inputs, run.gm, captured, settings)
        for hole in holes:  # facts the re-export assumed: verified where they fail, if the model runs there
            check_hole_runs(model, inputs, settings.dims, hole)
        captured = dataclasses.replace(captured, holes=captured.holes + holes)
        weights = Weights()  # the large initializers, kept out of protobuf until the file is written
        emitted = emit_onnx(program, captured, settings.dims, settings.opset, weights)
        report.note(emitted.notes)
        del program  # its graph and fake values are not needed past emission

    with report.timed("cleanup", 4, total, label):
        cleaned = cleanup(emitted.take_model(), size_limit=settings.external_data_threshold, weights=weights)
        report.note(cleaned.notes)
        report.note(restore_dim_names(cleaned.model, captured, settings))
        check_dynamic_dims(cleaned.model, captured, settings)
        report.lowered(run.records, (cleaned.ops_before, cleaned.ops_after), dim_names(cleaned.model), bucket)
        stamp_dims(cleaned.model, settings.dims, captured.input_names)
        save_onnx(cleaned.model, dest, settings.external_data_threshold, weights)
    return settings, captured, run.gm


def _exported(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], gm: torch.fx.GraphModule,
              captured: CapturedGraph, settings: Settings) -> tuple[Any, list]:
    """The passed graph as a program over the declared dims; a model that runs only at every
    k-th size of a dim declared without a step is told its step instead."""
    try:
        return exported(gm, captured, settings.dims)
    except GeneralizationError as exc:
        dims = settings.dims
        raise stepped_limit(model, inputs, dims) or confirmed_step(model, inputs, dims, exc) or exc


def check_lowered(lowered: Lowered, model: torch.nn.Module, inputs: tuple[torch.Tensor, ...],
                  reference: ReferenceRunner, report: Report, total: int,
                  points: Sequence[Mapping[str, int]] | None = None) -> Artifact:
    """Verify the lowered artifact; on a failure (or when asked) say where it comes from first."""
    def diagnose(rows: list[VerifyRow]) -> Any:
        if lowered.gm is not None:
            return _divergence(rows, report, lowered, total, model)
        # a bucket set: no FX graph to compare; whether the model reads the batch size instead
        return _batch_size_read(model, inputs, lowered.settings, report)

    artifact = lowered.artifact
    with report.timed("verify", 5, total):
        rows = verify(artifact, reference, points if points is not None else artifact.points, artifact.tolerance,
                      report.verify_time)
    return settle(artifact, rows, report, diagnose(rows))


def check_unproven(lowered: Lowered, model: torch.nn.Module, inputs: tuple[torch.Tensor, ...],
                   reference: ReferenceRunner, report: Report, total: int) -> Artifact:
    """``verify=False``: the artifact is still checked where what it claims rests on verification,
    not on torch.export's proof (a dim traced only from above its min, a size where a fact torch
    assumed fails); torchvision's Swin with a dynamic image size was silently wrong below the
    size torch traced it from. Nothing else is checked."""
    artifact, captured = lowered.artifact, lowered.captured
    dims = getattr(artifact, "dims", None) or getattr(artifact, "others", ())
    points = unproven_points(artifact.points, dims, captured.traced_low(), [p for h in captured.holes for p in h.points])
    if not points:
        report.note(["verification was skipped (verify=False): nothing checks this model against the original"])
        return artifact
    served = check_lowered(lowered, model, inputs, reference, report, total, points=points)
    shown = "; ".join(", ".join(f"{k}={v}" for k, v in p.items()) for p in points)
    report.note([f"verification was skipped (verify=False) except at the {len(points)} size(s) torch.export does not "
                 f"prove the graph for ({shown}): there it was checked against the original"])
    return served


def _batch_size_read(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], settings: Settings,
                     report: Report) -> BatchSizeRead | None:
    """Whether the model reads the batch size as a value, for a bucket set: then a batch padded to a
    bucket is not what the model would see, at sizes verification may not visit (a condition on
    ``x.size(0)`` flips between them), so this is checked at every size padding serves."""
    if settings.batch is None or settings.buckets is None:
        return None
    with ModuleState(model):
        read = batch_size_read(model, inputs, settings.batch, settings.atol, settings.rtol,
                               padding_probe_sizes(settings.buckets))
    if read is None:
        return None
    return dataclasses.replace(read, source=report.stages.get("buckets", {}).get("source"))


def _divergence(rows: list[VerifyRow], report: Report, lowered: Lowered, total: int, model: torch.nn.Module) -> Any:
    """Where the ONNX model first leaves the FX graph it was emitted from: on failure, or when asked."""
    settings, captured, gm = lowered.settings, lowered.captured, lowered.gm
    failed = next((r for r in rows if not r.passed), None)
    if failed is None and not settings.trace_divergence:
        return None
    with report.timed("trace_divergence", total, total):
        divergence = first_divergence(gm, lowered.artifact.primary, captured, settings, failed.sizes if failed else None)
        if divergence is None and failed is not None:  # then the FX graph differs: which stage made it
            divergence = graph_verdict(model, gm, captured, settings, failed.sizes)
    report.stages["divergence"] = divergence.to_dict() if divergence else {"result": "no ONNX value differs from the FX graph"}
    return divergence


def _copy(gm: torch.fx.GraphModule) -> torch.fx.GraphModule | None:
    """The graph as captured, for the verdict on a failure (the passes rewrite it in place). The
    weights are shared, not copied (a pass that changes one sets a new tensor): a copy would cost
    the model's size in memory for a verdict most compiles never need."""
    shared = {id(t): t for t in (*gm.parameters(), *gm.buffers())}
    try:
        return copy.deepcopy(gm, memo=shared)
    except Exception:  # a graph that can't be copied gets no verdict on which stage failed
        return None
