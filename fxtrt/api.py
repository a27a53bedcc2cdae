"""``fxtrt.compile``: frontend → passes → backend → report, in that order and no other.

Lowering (capture → passes → emit → cleanup → the ONNX model or a bucket set, verified:
:mod:`fxtrt.stages.lower`), then every stage of :data:`fxtrt.stages.STAGES` that the settings
want ([fp16] → [engines] → any registered kind), each artifact verified as soon as it exists,
then the report. How an artifact runs, serves and is checked is its own business
(:mod:`fxtrt.artifacts`); how it is made is its stage's; this module only walks the list.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from fxtrt.artifacts import REPORT_FILE, Artifact, ArtifactDir
from fxtrt.artifacts.base import Source
from fxtrt.artifacts.claims import Claims
from fxtrt.compiled_model import CompiledModel
from fxtrt.loading import SERVING, serving_record
from fxtrt.backend.verify import ReferenceRunner, without_staging
from fxtrt.errors import ConfigError, FxtrtError
from fxtrt.frontend.bind import bind, resolve_dims
from fxtrt.frontend.export import describe_failure, eager_failure
from fxtrt.frontend.state import ModuleState
from fxtrt.passes import resolve
from fxtrt.report import Report
from fxtrt.settings import DEFAULT_BATCH, Settings, make_settings
from fxtrt.stages import verified, wanted
from fxtrt.stages.lower import check_lowered, check_unproven, lower_artifact
from fxtrt.torch_log import collect_torch_log

log = logging.getLogger("fxtrt")

LOWERING_STEPS = 4  # capture, passes, emit, cleanup: the progress lines before verification


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
    batch: tuple[int, int, int] | None = DEFAULT_BATCH,
    batch_dims: Sequence[int | None] | Mapping[str, int | None] | int | None = None,
    dynamic: Mapping[int | str, Mapping[int, Any]] | None = None,
    dims: Mapping[str, tuple[int, ...]] | None = None,
    out_dir: str | Path | None = None,
    opset: int = Settings.opset,
    target: str = Settings.target,
    precision: str = Settings.precision,
    passes: Sequence[Any] | None = None,
    verify: bool = Settings.verify,
    atol: float = Settings.atol,
    rtol: float = Settings.rtol,
    debug_dir: str | Path | None = None,
    trace_divergence: bool = Settings.trace_divergence,
    buckets: Sequence[int] | None = None,
    keep_dynamic: str = Settings.keep_dynamic,
    fp16_atol: float = Settings.fp16_atol,
    fp16_rtol: float = Settings.fp16_rtol,
    strict: bool = Settings.strict,
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
    model (``batch`` must then be left out or None: a ``batch`` passed with it, even (1, 8, 32),
    is a ``ConfigError``). ``report.buckets`` keeps each bucket's passes, op counts and I/O. This also happens by itself, with
    default buckets from ``batch``, when the graph's structure depends on the batch size (a loop
    over the samples); ``report.stages["buckets"]`` says why. A batch up to the largest bucket is
    one call padded to the smallest bucket that holds it; larger batches are served in chunks
    unless verification shows chunks change the outputs (then they are a ``ConfigError``).

    ``precision="fp16"`` adds ``model_fp16.onnx``: float16 except numerically sensitive ops and
    the nodes the automatic repair keeps in float32, verified against the model within
    ``fp16_atol`` / ``fp16_rtol``. ``target="tensorrt"`` plans TensorRT engines (with more than
    one dynamic dim only ``keep_dynamic`` stays dynamic, the others get one engine per size),
    writes ``build_engines.sh``, and builds the engines only where TensorRT and a GPU exist; it
    first checks every node against TensorRT 10/11's ONNX parser tables (``report.stages["engines"]
    ["readiness"]``), warns below 100% and, with ``strict=True``, raises ``EngineError`` instead.
    """
    user_model, (model, inputs, binding) = model, bind(model, example_inputs, kwargs)
    batch_dims, dynamic = resolve_dims(binding, inputs, batch, batch_dims, dynamic, dims)
    settings = make_settings(
        model, inputs, batch=batch, batch_dims=batch_dims, dynamic=dynamic, out_dir=out_dir, opset=opset,
        input_names=binding.names,
        target=target, precision=precision, passes=passes, verify=verify, atol=atol, rtol=rtol,
        debug_dir=debug_dir, trace_divergence=trace_divergence,
        buckets=buckets, keep_dynamic=keep_dynamic, fp16_atol=fp16_atol, fp16_rtol=fp16_rtol, strict=strict,
    )
    pipeline = resolve(settings.passes)
    report = Report(model=type(user_model).__name__, settings=settings.to_dict(), stages={"inputs": binding.to_dict()})
    total = LOWERING_STEPS + settings.verify + len(wanted(settings))

    # The eager runs of verification may cache on the model too; compile leaves it as it found it.
    with ModuleState(user_model), ArtifactDir(settings.out_dir) as stage, _torch_log(settings.debug_dir) as torch_log:
        _run_example(model, inputs, binding.names)
        lowered = lower_artifact(model, inputs, settings, pipeline, report, stage.path, total)
        settings, captured, served = lowered.settings, lowered.captured, lowered.artifact
        # The one reference of this compile: each size's PyTorch outputs are computed once.
        reference = ReferenceRunner(model, inputs, settings.dims, captured.input_names, captured.output_names)
        if settings.verify:
            served = check_lowered(lowered, model, inputs, reference, report, total)
        else:
            served = check_unproven(lowered, model, inputs, reference, report, total)

        made: dict[str, Artifact] = {}  # the artifacts made beside the one served, by stage name
        for step, kind in enumerate(wanted(settings), start=LOWERING_STEPS + 1 + settings.verify):
            with report.timed(kind.name, step, total):
                artifact = kind.make(Source(served, reference if settings.verify else None, stage.path, settings))
                report.add(artifact)
                if settings.verify and artifact.verifiable:
                    artifact = verified(artifact, reference, report)
            if kind.replaces:
                served = artifact
            else:
                made[kind.name] = artifact

        report.artifacts = stage.index(served, *made.values())
        claims = Claims.of(captured.input_names, [tuple(t.shape) for t in inputs], served.claimed())
        report.stages[SERVING] = serving_record(served, claims, captured.output_names, captured.out_spec)
        if torch_log.records:
            report.stages["torch_log"] = torch_log.stage()
        report.write(stage.path / REPORT_FILE)
    log.info("artifacts in %s", stage.final)
    assert stage.final is not None
    compiled = CompiledModel(served.moved_to(stage.final), report, captured, settings, binding, graph_module=lowered.gm,
                             made={k: a.moved_to(stage.final) for k, a in made.items()}, claims=claims)
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
