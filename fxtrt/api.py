"""``fxtrt.compile``: frontend → passes → backend → report, in that order and no other.

capture → passes → emit → cleanup → artifact → [fp16] → [engines] → report, with every artifact
verified by the one verification stage as soon as it exists. How an artifact runs, serves and
is checked is its own business (:mod:`fxtrt.artifacts`); this module only orders the stages.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from fxtrt.artifacts import REPORT_FILE, Artifact, ArtifactDir, BucketSet, EngineSet, Fp16Model, OnnxModel
from fxtrt.artifacts.claims import Claims, stamp_dims
from fxtrt.artifacts.loading import SERVING, serving_record
from fxtrt.artifacts.compiled_model import CompiledModel
from fxtrt.artifacts.onnx_model import MODEL_FILE, bucket_file
from fxtrt.backend.buckets import BatchSizeRead, batch_size_read, fallback, padding_probe_sizes
from fxtrt.backend.cleanup import check_dynamic_dims, cleanup, restore_dim_names, save_onnx
from fxtrt.backend.divergence import graph_verdict
from fxtrt.backend.divergence import trace_divergence as first_divergence  # and a trace_divergence= one
from fxtrt.backend.emit import dim_names, emit_onnx
from fxtrt.backend.verify import ReferenceRunner, VerifyRow
from fxtrt.backend.verify import verify as verify_artifact  # compile() has a verify= argument
from fxtrt.debug import PassDebugger
from fxtrt.backend.verify import without_staging
from fxtrt.errors import ConfigError, FxtrtError, StructureError
from fxtrt.frontend.bind import bind, resolve_dims
from fxtrt.frontend.capture import CapturedGraph, capture
from fxtrt.frontend.export import describe_failure, eager_failure
from fxtrt.frontend.guards import check_hole_runs
from fxtrt.frontend.inputs import inputs_at
from fxtrt.frontend.squeezes import check_squeezes
from fxtrt.frontend.state import ModuleState
from fxtrt.passes import PassContext, resolve, run_passes
from fxtrt.report import Report, capture_stage
from fxtrt.settings import Settings, make_settings
from fxtrt.torch_log import collect_torch_log

log = logging.getLogger("fxtrt")


def _typed_errors(fn):
    """Whatever escapes compile is an FxtrtError: an exception of another type becomes one, at the
    user's line where its traceback passes through their code."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FxtrtError:
            raise
        except Exception as exc:
            message, source = describe_failure(exc)
            raise FxtrtError(f"compile failed: {type(exc).__name__}: {without_staging(message)}", source=source,
                             hint="fxtrt did not expect this failure; please report it with the model "
                                  "(this error's __cause__ has the full traceback)") from exc
    return wrapper


@_typed_errors
def compile(
    model: torch.nn.Module,
    example_inputs: Any = None,
    *,
    kwargs: Mapping[str, Any] | None = None,
    batch: tuple[int, int, int] | None = (1, 8, 32),
    batch_dims: Sequence[int | None] | Mapping[str, int | None] | int | None = None,
    dynamic: Mapping[int | str, Mapping[int, Any]] | None = None,
    dims: Mapping[str, tuple[int, ...]] | None = None,
    out_dir: str | Path | None = None,
    opset: int = 17,
    target: str = "onnx",
    precision: str = "fp32",
    passes: Sequence[Any] | None = None,
    verify: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    debug_dir: str | Path | None = None,
    trace_divergence: bool = False,
    buckets: Sequence[int] | None = None,
    keep_dynamic: str = "batch",
    fp16_atol: float = 1e-2,
    fp16_rtol: float = 1e-2,
) -> CompiledModel:
    """Compile ``model`` to an ONNX model that serves every size in ``batch`` / ``dynamic``.

    ``example_inputs``: a tensor, a tuple of tensors or a dict of keyword arguments; ``kwargs``
    more of them (non-tensors become constants). Dims may name inputs and symbols (``dims=``).

    Either the result matches the original at min, opt, max and an odd size of every dynamic
    dim, or an ``FxtrtError`` says which node and which line of the user's code is at fault.

    ``debug_dir`` gets a dump of the graph after every pass and turns on a numeric check after
    each one (it is written as the run goes, failures included). torch's own logging goes to
    ``report.stages["torch_log"]`` and ``debug_dir/torch_log.txt``, not the terminal. ``trace_divergence`` runs the
    layer-wise ONNX-vs-FX comparison even when verification passes; it always runs on failure.

    ``buckets=(1, 4, 8, 16)`` compiles one static-batch model per size instead of one dynamic
    model (``batch`` must then be left at its default or None). This also happens by itself, with
    default buckets from ``batch``, when the graph's structure depends on the batch size (a loop
    over the samples); ``report.stages["buckets"]`` says why. A batch up to the largest bucket is
    one call padded to the smallest bucket that holds it; larger batches are served in chunks
    unless verification shows chunks change the outputs (then they are a ``ConfigError``).

    ``precision="fp16"`` adds ``model_fp16.onnx``: float16 except numerically sensitive ops and
    the nodes the automatic repair keeps in float32, verified against the model within
    ``fp16_atol`` / ``fp16_rtol``. ``target="tensorrt"`` plans TensorRT engines (with more than
    one dynamic dim only ``keep_dynamic`` stays dynamic, the others get one engine per size),
    writes ``build_engines.sh``, and builds the engines only where TensorRT and a GPU exist.
    """
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    user_model, (model, inputs, binding) = model, bind(model, example_inputs, kwargs)
    batch_dims, dynamic = resolve_dims(binding, inputs, batch, batch_dims, dynamic, dims)
    settings = make_settings(
        model, inputs, batch=batch, batch_dims=batch_dims, dynamic=dynamic, out_dir=out_dir, opset=opset,
        input_names=binding.names,
        target=target, precision=precision, passes=passes, verify=verify, atol=atol, rtol=rtol,
        debug_dir=debug_dir, trace_divergence=trace_divergence,
        buckets=buckets, keep_dynamic=keep_dynamic, fp16_atol=fp16_atol, fp16_rtol=fp16_rtol,
    )
    pipeline = resolve(settings.passes)
    report = Report(model=type(user_model).__name__, settings=settings.to_dict(), stages={"inputs": binding.to_dict()})
    total = (5 if settings.verify else 4) + (settings.precision == "fp16") + (settings.target == "tensorrt")

    # The eager runs of verification may cache on the model too; compile leaves it as it found it.
    with ModuleState(user_model), ArtifactDir(settings.out_dir) as stage, _torch_log(settings.debug_dir) as torch_log:
        _run_example(model, inputs, binding.names)
        settings, captured, gm, artifact = _lower_artifact(model, inputs, settings, pipeline, report, stage.path, total)
        # The one reference of this compile: each size's PyTorch outputs are computed once.
        reference = ReferenceRunner(model, inputs, settings.dims, captured.input_names, captured.output_names)
        if settings.verify:
            with report.timed("verify", 5, total):
                rows = verify_artifact(artifact, reference, artifact.points, artifact.tolerance)
            if gm is not None:
                divergence = _divergence(rows, report, settings, gm, artifact, captured, total, model)
            else:  # a bucket set: no FX graph to compare; whether the model reads the batch size instead
                divergence = _batch_size_read(model, inputs, settings, report)
            artifact = _check(artifact, rows, report, divergence)
        else:
            report.notes.append("verification was skipped (verify=False): nothing checks this model against the original")

        step = 6 if settings.verify else 5
        if settings.precision == "fp16":
            with report.timed("fp16", step, total):
                artifact = Fp16Model.convert(artifact, reference if settings.verify else None, stage.path, settings)
                report.add(artifact)
                if settings.verify:
                    artifact = _check(artifact, verify_artifact(artifact, reference, artifact.points, artifact.tolerance), report)
            step += 1
        engines: EngineSet | None = None
        if settings.target == "tensorrt":
            with report.timed("engines", step, total):
                engines = EngineSet.build(artifact, stage.path, settings)
                report.add(engines)
                if engines.built and settings.verify:
                    _check(engines, verify_artifact(engines, reference, engines.points, engines.tolerance), report)

        report.artifacts = stage.index(artifact, engines)
        claims = Claims.of(captured.input_names, [tuple(t.shape) for t in inputs], artifact.claimed())
        report.stages[SERVING] = serving_record(artifact, claims, captured.output_names, captured.out_spec)
        if torch_log.records:
            report.stages["torch_log"] = torch_log.stage()
        report.write(stage.path / REPORT_FILE)
    log.info("artifacts in %s", stage.final)
    assert stage.final is not None
    compiled = CompiledModel(artifact.moved_to(stage.final), report, captured, settings, binding, graph_module=gm,
                             engines=engines.moved_to(stage.final) if engines is not None else None, claims=claims)
    stage.remove_with(compiled)  # a temp dir of its own (no out_dir) goes when the model does
    return compiled


@contextlib.contextmanager
def _torch_log(debug_dir: Path | None):
    """torch's logging while compile runs: kept (for ``report.stages["torch_log"]``), written to
    ``debug_dir`` whether compile succeeds or fails, never printed."""
    with collect_torch_log() as torch_log:
        try:
            yield torch_log
        finally:
            if debug_dir is not None and torch_log.records:
                torch_log.write(Path(debug_dir))


def _run_example(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], names: Sequence[str]) -> None:
    """The model on its own example, eagerly, in eval mode (as it is compiled), its state restored
    after: a model that cannot run its example is a ConfigError before any work."""
    with ModuleState(model):
        model.eval()
        failure = eager_failure(model, inputs)
    if failure is not None:
        message, source = failure
        example = ", ".join(f"{n}: {str(t.dtype).replace('torch.', '')} {tuple(t.shape)}" for n, t in zip(names, inputs))
        raise ConfigError(f"the model fails on its own example ({example}): {message}", source=source,
                          hint="give an example the model runs on eagerly in eval mode (its dtypes, shapes and "
                               "device): compile traces the model on it")


def _check(artifact: Artifact, rows: list[VerifyRow], report: Report, divergence: Any = None) -> Artifact:
    """The artifact as the rows leave it (it may serve less), its rows in the report, its error if one failed."""
    artifact, rows = artifact.settle(rows)
    report.add(artifact)
    report.verification += rows
    artifact.check(rows, divergence)
    return artifact


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


def _divergence(rows: list[VerifyRow], report: Report, settings: Settings, gm: torch.fx.GraphModule,
                artifact: Artifact, captured: CapturedGraph, total: int, model: torch.nn.Module) -> Any:
    """Where the ONNX model first leaves the FX graph it was emitted from: on failure, or when asked."""
    failed = next((r for r in rows if not r.passed), None)
    if failed is None and not settings.trace_divergence:
        return None
    with report.timed("trace_divergence", total, total):
        divergence = first_divergence(gm, artifact.primary, captured, settings, failed.sizes if failed else None)
        if divergence is None and failed is not None:  # then the FX graph differs: which stage made it
            divergence = graph_verdict(model, gm, captured, settings, failed.sizes)
    report.stages["divergence"] = divergence.to_dict() if divergence else {"result": "no ONNX value differs from the FX graph"}
    return divergence


def _lower_artifact(
    model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], settings: Settings, pipeline: Sequence[Any],
    report: Report, stage_dir: Path, total: int,
) -> tuple[Settings, CapturedGraph, torch.fx.GraphModule | None, Artifact]:
    """The dynamic model, or (asked for, or when the graph's structure follows the batch) a bucket set."""
    if settings.buckets is None:
        try:
            settings, captured, gm = _lower(model, inputs, settings, pipeline, report, stage_dir / MODEL_FILE, total)
            return settings, captured, gm, OnnxModel.compiled(stage_dir / MODEL_FILE, captured, settings)
        except StructureError as exc:
            if settings.batch is None or (exc.dims and settings.batch.name not in exc.dims):
                raise  # static batches would not help: the structure follows another dim
            buckets, report.stages["buckets"], note = fallback(settings.batch, exc)
            log.warning("the batch can't be dynamic (%s%s); compiling static-batch models for batch %s instead",
                        exc.message, f", at {exc.source}" if exc.source else "", list(buckets))
            report.note([note])
            settings = dataclasses.replace(settings, buckets=buckets)
    batch = settings.batch
    assert batch is not None and settings.buckets is not None
    static = dataclasses.replace(settings, dims=tuple(d for d in settings.dims if not d.is_batch))
    paths: dict[int, Path] = {}
    for b in settings.buckets:
        paths[b] = stage_dir / bucket_file(b)
        static, captured, _ = _lower(model, inputs_at(inputs, [batch], {batch.name: b}), static, pipeline, report,
                                     paths[b], total, label=f"batch {b}")
    settings = dataclasses.replace(settings, dims=(batch, *static.dims))
    report.settings["dims"] = [d.to_dict() for d in settings.dims]
    report.stages.setdefault("buckets", {"buckets": list(settings.buckets), "automatic": False,
                                         "why": "buckets= was given"})
    bucket_set = BucketSet.compiled(paths, captured, settings)
    report.add(bucket_set)
    if settings.debug_dir is not None:
        report.note(["debug_dir: the static bucket models are not dumped pass by pass"])
    return settings, captured, None, bucket_set


def _lower(
    model: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    settings: Settings,
    pipeline: Sequence[Any],
    report: Report,
    dest: Path,
    total: int,
    label: str = "",
) -> tuple[Settings, CapturedGraph, torch.fx.GraphModule]:
    """capture → passes → emit → cleanup → ``dest``: the one pipeline every ONNX file goes through
    (the dynamic model, and each static model of a bucket set, labelled "batch 4"). The settings
    it returns hold the dims as captured (dims torch.export proves equal are one)."""
    with report.timed("capture", 1, total, label):
        captured = capture(model, inputs, settings)
        check_squeezes(captured.base.gm, settings.dims)
    report.note(captured.notes)
    if captured.declared != settings.dims:
        settings = dataclasses.replace(settings, dims=captured.declared)
        report.settings["dims"] = [d.to_dict() for d in settings.dims]

    with report.timed("passes", 2, total, label):
        observer = None
        if settings.debug_dir is not None and not label:
            observer = PassDebugger(settings.debug_dir, model, captured, settings)
        pristine = _copy(captured.base.gm) if not label else None
        gm, report.passes = run_passes(captured.base.gm, PassContext(settings, captured), pipeline, observer)
        report.note(n for r in report.passes for n in r.notes)  # subgraphs a pass left as captured
        captured = dataclasses.replace(captured, pristine=pristine)

    if not label:
        report.stages["capture"] = capture_stage(captured, report.passes)

    with report.timed("emit", 3, total, label):
        emitted = emit_onnx(gm, captured, settings.dims, settings.opset)
        report.note(emitted.notes)
        for hole in emitted.holes:  # facts the re-export assumed: verified where they fail, if the model runs there
            check_hole_runs(model, inputs, settings.dims, hole)
        captured = dataclasses.replace(captured, holes=captured.holes + emitted.holes)

    with report.timed("cleanup", 4, total, label):
        cleaned = cleanup(emitted.model, size_limit=settings.external_data_threshold)
        report.note(cleaned.notes)
        report.ops_before, report.ops_after = cleaned.ops_before, cleaned.ops_after
        report.note(restore_dim_names(cleaned.model, captured, settings))
        check_dynamic_dims(cleaned.model, captured, settings)
        report.io = dim_names(cleaned.model)
        stamp_dims(cleaned.model, settings.dims, captured.input_names)
        save_onnx(cleaned.model, dest, settings.external_data_threshold)
    return settings, captured, gm


def _copy(gm: torch.fx.GraphModule) -> torch.fx.GraphModule | None:
    """The graph as captured, for the verdict on a failure (the passes rewrite it in place)."""
    try:
        return copy.deepcopy(gm)
    except Exception:  # a graph that can't be copied gets no verdict on which stage failed
        return None
