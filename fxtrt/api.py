"""``fxtrt.compile``: frontend → passes → backend → report, in that order and no other."""
from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import onnx
import torch
import torch.utils._pytree as pytree

from fxtrt.artifacts import ArtifactDir
from fxtrt.backend.buckets import (
    BucketRunner,
    BucketServer,
    bucket_points,
    bucket_verification_sizes,
    default_buckets,
    input_metadata,
    output_batch_axes,
    static_output_shapes,
)
from fxtrt.backend.cleanup import cleanup, save_onnx
from fxtrt.backend.divergence import Divergence, find_divergence
from fxtrt.backend.emit import dim_names, emit_onnx
from fxtrt.backend.engines import raise_engine_mismatch, run_engine_stage, verify_engines
from fxtrt.backend.precision import Fp16Stage, make_fp16
from fxtrt.backend.tensorrt import BUILD_SCRIPT_NAME
from fxtrt.backend.verify import (
    VerifyRow,
    feeds_at,
    format_rows,
    ort_meta,
    raise_on_failure,
    run_comparison,
    torch_outputs,
    torch_runner,
    verification_points,
    verify_model,
)
from fxtrt.errors import ConfigError, EmitError, PrecisionError, StructureError
from fxtrt.frontend.capture import CapturedGraph, capture, dynamic_axes
from fxtrt.frontend.state import ModuleState
from fxtrt.frontend.inputs import inputs_at
from fxtrt.debug import PassDebugger
from fxtrt.passes import PassContext, resolve, run_passes
from fxtrt.report import Report, capture_stage
from fxtrt.settings import Settings, make_settings, normalize_inputs

log = logging.getLogger("fxtrt")

MODEL_FILE = "model.onnx"
FP16_FILE = "model_fp16.onnx"
REPORT_FILE = "report.json"


def bucket_file(batch: int, precision: str = "fp32") -> str:
    """``model_b4.onnx``, or ``model_fp16_b4.onnx`` (its engine: ``model_fp16_b4.engine``)."""
    return f"model_fp16_b{batch}.onnx" if precision == "fp16" else f"model_b{batch}.onnx"


class CompiledModel:
    """The verified artifact: its ONNX path, its report, and ways to run it.

    ``onnx_path`` is the model that matches ``precision``: ``model.onnx`` (fp32) or
    ``model_fp16.onnx``; the fp32 model stays in ``report.artifacts["onnx_fp32"]``. For a bucket
    set, ``buckets`` lists the static batch sizes, ``onnx_paths`` maps each to its model,
    ``onnx_path`` is the largest bucket's, and ``run`` serves any batch size through them.
    """

    def __init__(self, onnx_path: Path, report: Report, captured: CapturedGraph, settings: Settings,
                 graph_module: torch.fx.GraphModule | None = None, server: BucketServer | None = None) -> None:
        self.onnx_path = onnx_path
        self.buckets: tuple[int, ...] | None = server.buckets if server is not None else None
        self.onnx_paths: dict[int, Path] = dict(server.paths) if server is not None else {}
        self._server = server
        self.graph_module = graph_module  # the FX graph after the passes: what was emitted
        self.report = report
        self.settings = settings
        self.input_names = captured.input_names
        self.output_names = captured.output_names
        self._out_spec = captured.out_spec
        self._session = None

    @property
    def session(self):
        if self._session is None:
            import onnxruntime as ort

            self._session = ort.InferenceSession(str(self.onnx_path), providers=["CPUExecutionProvider"])
        return self._session

    def run(self, *inputs: Any) -> tuple[np.ndarray, ...]:
        """Run with ONNX Runtime (CPU). Inputs are torch tensors or numpy arrays.

        A bucket set splits the batch into bucket-sized chunks, pads the last one and slices the
        outputs back (see ``fxtrt.backend.buckets``).
        """
        if len(inputs) != len(self.input_names):
            raise ConfigError(f"expected {len(self.input_names)} input(s) ({', '.join(self.input_names)}), got {len(inputs)}")
        if self._server is not None:
            return self._server.run(inputs)
        feeds = {}
        for meta, value in zip(self.session.get_inputs(), inputs):
            arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            feeds[meta.name] = arr.astype(_ORT_TYPES.get(meta.type, arr.dtype), copy=False)
        return tuple(self.session.run(None, feeds))

    def __call__(self, *inputs: Any) -> Any:
        """Run and return torch tensors in the structure the original model returns."""
        outs = [torch.from_numpy(np.ascontiguousarray(a)) for a in self.run(*inputs)]
        return pytree.tree_unflatten(outs, self._out_spec)

    def __repr__(self) -> str:
        return f"CompiledModel({self.onnx_path})"


_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
}


@contextmanager
def _stage(report: Report, name: str, step: int, total: int, label: str = "") -> Iterator[None]:
    """Log progress and add the time to ``report.timings[name]`` (summed over bucket models)."""
    what = f"{name} ({label})" if label else name
    log.info("[%d/%d] %s ...", step, total, what)
    start = time.perf_counter()
    elapsed = 0.0
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        report.timings[name] = report.timings.get(name, 0.0) + elapsed
    log.info("[%d/%d] %s done in %.1fs", step, total, what, elapsed)


def compile(
    model: torch.nn.Module,
    example_inputs: Any,
    *,
    batch: tuple[int, int, int] | None = (1, 8, 32),
    batch_dims: Sequence[int | None] | int | None = None,
    dynamic: Mapping[int, Mapping[int, Any]] | None = None,
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

    Either the result matches the original at min, opt, max and an odd size of every dynamic
    dim, or an ``FxtrtError`` says which node and which line of the user's code is at fault.

    ``debug_dir`` gets a dump of the graph after every pass and turns on a numeric check after
    each one (it is written as the run goes, failures included). ``trace_divergence`` runs the
    layer-wise ONNX-vs-FX comparison even when verification passes; it always runs on failure.

    ``buckets=(1, 4, 8, 16)`` compiles one static-batch model per size instead of one dynamic
    model (``batch`` must then be left at its default or None); the result serves any batch.
    This also happens by itself, with default buckets from ``batch``, when the graph's structure
    depends on the batch size (a loop over the samples); ``report.stages["buckets"]`` says why.

    ``precision="fp16"`` adds ``model_fp16.onnx``: float16 except numerically sensitive ops and
    the nodes the automatic repair keeps in float32, verified against the model within
    ``fp16_atol`` / ``fp16_rtol``. ``target="tensorrt"`` plans TensorRT engines (with more than
    one dynamic dim only ``keep_dynamic`` stays dynamic, the others get one engine per size),
    writes ``build_engines.sh``, and builds the engines only where TensorRT and a GPU exist.
    """
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = normalize_inputs(example_inputs)
    settings = make_settings(
        model, inputs, batch=batch, batch_dims=batch_dims, dynamic=dynamic, out_dir=out_dir, opset=opset,
        target=target, precision=precision, passes=passes, verify=verify, atol=atol, rtol=rtol,
        debug_dir=debug_dir, trace_divergence=trace_divergence,
        buckets=buckets, keep_dynamic=keep_dynamic, fp16_atol=fp16_atol, fp16_rtol=fp16_rtol,
    )
    pipeline = resolve(settings.passes)
    report = Report(model=type(model).__name__, settings=settings.to_dict())
    total = (5 if settings.verify else 4) + (settings.precision == "fp16") + (settings.target == "tensorrt")

    # The eager runs of verification may cache on the model too; compile leaves it as it found it.
    with ModuleState(model), ArtifactDir(settings.out_dir) as stage:
        server: BucketServer | None = None
        gm: torch.fx.GraphModule | None = None
        staged = stage.path / MODEL_FILE
        if settings.buckets is None:
            try:
                captured, gm = _lower(model, inputs, settings, pipeline, report, staged, total)
            except StructureError as exc:
                if settings.batch is None:
                    raise
                settings = _fall_back_to_buckets(settings, exc, report)
        if settings.buckets is not None:
            captured, server = _lower_buckets(model, inputs, settings, pipeline, report, stage.path, total)

        if settings.verify and server is not None:
            with _stage(report, "verify", 5, total):
                report.verification = verify_buckets(model, inputs, server, captured, settings)
            raise_on_failure(report.verification, settings.atol, settings.rtol)
        elif settings.verify:
            with _stage(report, "verify", 5, total):
                report.verification = verify_model(model, staged, captured, settings)
            failed = next((r for r in report.verification if not r.passed), None)
            if failed is not None or settings.trace_divergence:
                with _stage(report, "trace_divergence", total, total):
                    divergence = trace(gm, staged, captured, settings, failed.sizes if failed else None)
                report.stages["divergence"] = divergence.to_dict() if divergence else {
                    "result": "no ONNX value differs from the FX graph"}
                if failed is not None:
                    raise_on_failure(report.verification, settings.atol, settings.rtol, divergence)
        else:
            report.notes.append("verification was skipped (verify=False): nothing checks this model against the original")

        step = 6 if settings.verify else 5
        fp16: Fp16Stage | None = None
        if settings.precision == "fp16":
            with _stage(report, "fp16", step, total):
                fp16 = _to_fp16(model, inputs, captured, settings, stage.path, server, report)
            step += 1
        if settings.target == "tensorrt":
            with _stage(report, "engines", step, total):
                _engines(model, inputs, captured, settings, stage.path, server, fp16, report)

        onnx_path, final_server = _artifacts(stage, settings, server, fp16, report)
        report.write(stage.path / REPORT_FILE)
    log.info("artifacts in %s", stage.final)
    return CompiledModel(onnx_path, report, captured, settings, graph_module=gm, server=final_server)


def _note(report: Report, notes: Sequence[str]) -> None:
    report.notes += [n for n in notes if n not in report.notes]


def _lower(
    model: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    settings: Settings,
    pipeline: Sequence[Any],
    report: Report,
    dest: Path,
    total: int,
    label: str = "",
) -> tuple[CapturedGraph, torch.fx.GraphModule]:
    """capture → passes → emit → cleanup → ``dest``: the one pipeline every ONNX file goes through
    (the dynamic model, and each static model of a bucket set, labelled "batch 4")."""
    with _stage(report, "capture", 1, total, label):
        captured = capture(model, inputs, settings)
    _note(report, captured.notes)

    with _stage(report, "passes", 2, total, label):
        observer = None
        if settings.debug_dir is not None and not label:
            observer = PassDebugger(settings.debug_dir, model, captured, settings)
        gm, report.passes = run_passes(captured.base.gm, PassContext(settings, captured), pipeline, observer)

    if not label:
        report.stages["capture"] = capture_stage(captured, report.passes)

    with _stage(report, "emit", 3, total, label):
        emitted = emit_onnx(gm, captured, settings.dims, settings.opset)
        _note(report, emitted.notes)

    with _stage(report, "cleanup", 4, total, label):
        cleaned = cleanup(emitted.model, size_limit=settings.external_data_threshold)
        _note(report, cleaned.notes)
        report.ops_before, report.ops_after = cleaned.ops_before, cleaned.ops_after
        _check_dynamic(cleaned.model, captured, settings)
        report.io = dim_names(cleaned.model)
        save_onnx(cleaned.model, dest, settings.external_data_threshold)
    return captured, gm


def _fall_back_to_buckets(settings: Settings, exc: StructureError, report: Report) -> Settings:
    """The batch can't be dynamic because the graph's structure follows it: serve a bucket set,
    with :func:`~fxtrt.backend.buckets.default_buckets` of the batch range, and say why."""
    batch = settings.batch
    assert batch is not None
    buckets = default_buckets(batch.min, batch.opt, batch.max)
    report.stages["buckets"] = {
        "buckets": list(buckets), "automatic": True,
        "why": f"the batch can't be dynamic: {exc.message}", "node": exc.node, "source": exc.source,
        "rule": "min, opt and max of batch, plus the powers of two from 4 up between them",
    }
    log.warning("the batch can't be dynamic (%s%s); compiling static-batch models for batch %s instead",
                exc.message, f", at {exc.source}" if exc.source else "", list(buckets))
    _note(report, [f"the graph's structure depends on the batch size, so fxtrt compiled a static-batch model per "
                   f"bucket {list(buckets)} instead of one dynamic model (see stages.buckets)"])
    return dataclasses.replace(settings, buckets=buckets)


def _lower_buckets(
    model: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    settings: Settings,
    pipeline: Sequence[Any],
    report: Report,
    stage_dir: Path,
    total: int,
) -> tuple[CapturedGraph, BucketServer]:
    """One static model per bucket (other dynamic dims stay dynamic), and the server over them."""
    batch = settings.batch
    assert batch is not None and settings.buckets is not None
    static = dataclasses.replace(settings, dims=tuple(d for d in settings.dims if not d.is_batch))
    paths: dict[int, Path] = {}
    shapes: dict[int, list[list[int | str]]] = {}
    captured = None
    for b in settings.buckets:
        dest = stage_dir / bucket_file(b)
        captured, _ = _lower(model, inputs_at(inputs, [batch], {batch.name: b}), static, pipeline, report, dest,
                             total, label=f"batch {b}")
        paths[b] = dest
        shapes[b] = static_output_shapes(onnx.load(str(dest), load_external_data=False))
    assert captured is not None
    server = BucketServer(paths, batch.sites, output_batch_axes(shapes))
    stage = report.stages.setdefault("buckets", {"buckets": list(settings.buckets), "automatic": False,
                                                 "why": "buckets= was given"})
    stage["models"] = {str(b): p.name for b, p in paths.items()}
    stage["output_batch_axes"] = dict(zip(captured.output_names, server.output_axes))
    stage["serving"] = ("greedy chunks of the largest bucket that fits; fewer samples than the smallest bucket "
                        "are padded to it by repeating the last sample; outputs sliced back and concatenated")
    if settings.debug_dir is not None:
        _note(report, ["debug_dir: the static bucket models are not dumped pass by pass"])
    return captured, server


def _bucket_feeds(inputs, settings: Settings, captured: CapturedGraph, batch_sizes: Sequence[int]):
    others = [d for d in settings.dims if not d.is_batch]
    return feeds_at(inputs, settings.dims, captured.input_names, bucket_points(list(batch_sizes), others))


def verify_buckets(
    model: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    server: BucketServer,
    captured: CapturedGraph,
    settings: Settings,
    *,
    atol: float | None = None,
    rtol: float | None = None,
    note: str = "",
) -> list[VerifyRow]:
    """The bucket set, served as ``CompiledModel.run`` serves it, against the original at every
    bucket and the sizes between (:func:`~fxtrt.backend.buckets.bucket_verification_sizes`)."""
    assert settings.batch is not None and settings.buckets is not None
    atol = settings.atol if atol is None else atol
    rtol = settings.rtol if rtol is None else rtol
    feeds = _bucket_feeds(inputs, settings, captured, bucket_verification_sizes(settings.buckets))
    meta = input_metadata(server.paths[server.buckets[-1]], settings.batch.sites)
    runner = BucketRunner(server, captured.input_names, captured.output_names, meta)
    rows = run_comparison([torch_runner(model, inputs, captured, meta), runner], feeds, atol, rtol)
    return [dataclasses.replace(r, note="; ".join(x for x in (note, f"served as {server.describe(r.sizes['batch'])}",
                                                              r.note) if x)) for r in rows]


def _to_fp16(
    model: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    captured: CapturedGraph,
    settings: Settings,
    stage_dir: Path,
    server: BucketServer | None,
    report: Report,
) -> Fp16Stage:
    """fp16 models repaired against the original at the verification feeds, then verified
    (served through the bucket set, for buckets) at the fp16 tolerances."""
    sites = settings.batch.sites if server is not None and settings.batch is not None else ()
    atol, rtol = settings.fp16_atol, settings.fp16_rtol
    if server is None:
        jobs = [(None, stage_dir / MODEL_FILE, stage_dir / FP16_FILE,
                 feeds_at(inputs, settings.dims, captured.input_names, verification_points(settings.dims, captured.traced_low())))]
    else:
        jobs = [(b, path, stage_dir / bucket_file(b, "fp16"), _bucket_feeds(inputs, settings, captured, [b]))
                for b, path in server.paths.items()]
    fp16 = Fp16Stage()
    for key, src, dest, feeds in jobs:
        refs = None
        if settings.verify:
            refs = torch_outputs(torch_runner(model, inputs, captured, input_metadata(src, sites)), feeds)
        make_fp16(src, dest, [f for _, f in feeds], refs, atol=atol, rtol=rtol,
                  threshold=settings.external_data_threshold, stage=fp16, key=key)
    report.stages["fp16"] = fp16.to_dict()
    if not settings.verify:
        _note(report, ["the fp16 model was neither repaired nor verified (verify=False)"])
        return fp16
    note = f"fp16 (atol={atol:g}, rtol={rtol:g})"
    if server is None:
        from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

        feeds = jobs[0][3]
        half = OnnxrtRunner(SessionFromOnnx(str(fp16.paths[None]), providers=["CPUExecutionProvider"]),
                            name="onnxruntime-fp16")
        rows = run_comparison([torch_runner(model, inputs, captured, ort_meta(stage_dir / MODEL_FILE)), half],
                              feeds, atol, rtol)
        rows = [dataclasses.replace(r, note="; ".join(x for x in (note, r.note) if x)) for r in rows]
    else:
        half_server = BucketServer({b: p for b, p in fp16.paths.items() if b is not None}, server.batch_sites,
                                   server.output_axes)
        rows = verify_buckets(model, inputs, half_server, captured, settings, atol=atol, rtol=rtol, note=note)
    report.verification += rows
    bad = [r for r in rows if not r.passed]
    if bad:
        raise PrecisionError(
            f"the fp16 model passed its repair but not verification at {len(bad)} of {len(rows)} checks "
            f"(|a-b| <= {atol:g} + {rtol:g}*|ref|):\n{format_rows(rows)}",
            rows=rows, hint="relax fp16_atol / fp16_rtol, or keep this model in fp32",
        )
    return fp16


def _engines(
    model: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    captured: CapturedGraph,
    settings: Settings,
    stage_dir: Path,
    server: BucketServer | None,
    fp16: Fp16Stage | None,
    report: Report,
) -> None:
    """Plan engines for the artifact that matches ``precision``, write build_engines.sh, and
    build + verify the engines only where TensorRT and a GPU are usable."""
    if server is None:
        source: Path | dict[int, Path] = fp16.paths[None] if fp16 is not None else stage_dir / MODEL_FILE
    else:
        source = {b: p for b, p in fp16.paths.items() if b is not None} if fp16 is not None else dict(server.paths)
    atol, rtol = (settings.fp16_atol, settings.fp16_rtol) if fp16 is not None else (settings.atol, settings.rtol)
    engines = run_engine_stage(stage_dir, settings, source, atol=atol, rtol=rtol)
    report.stages["engines"] = engines.to_dict(stage_dir)
    if engines.status != "built":
        _note(report, [f"TensorRT engines were planned but not built ({engines.reason}); "
                       f"{BUILD_SCRIPT_NAME} builds them on a machine with TensorRT 10/11 and a GPU"])
        return
    if not settings.verify:
        return
    if server is None:
        feeds = feeds_at(inputs, settings.dims, captured.input_names, verification_points(settings.dims, captured.traced_low()))
        meta = ort_meta(stage_dir / MODEL_FILE)
    else:
        assert settings.batch is not None and settings.buckets is not None
        feeds = _bucket_feeds(inputs, settings, captured, settings.buckets)
        meta = input_metadata(server.paths[server.buckets[-1]], settings.batch.sites)
    rows = verify_engines(engines, feeds, lambda: torch_runner(model, inputs, captured, meta), atol, rtol)
    report.verification += rows
    raise_engine_mismatch(rows, atol, rtol)


def _artifacts(
    stage: ArtifactDir, settings: Settings, server: BucketServer | None, fp16: Fp16Stage | None, report: Report
) -> tuple[Path, BucketServer | None]:
    """``report.artifacts`` (final paths of files that exist), the path that matches ``precision``,
    and the server over the final bucket paths."""
    artifacts: dict[str, str] = {}
    final_server = None
    if server is None:
        main = FP16_FILE if fp16 is not None else MODEL_FILE
        onnx_path = stage.final_path(main)
        artifacts["onnx"] = str(onnx_path)
        if fp16 is not None:
            artifacts["onnx_fp32"] = str(stage.final_path(MODEL_FILE))
    else:
        names = {b: bucket_file(b, settings.precision) for b in server.buckets}
        final_server = BucketServer({b: stage.final_path(n) for b, n in names.items()}, server.batch_sites,
                                    server.output_axes)
        onnx_path = final_server.paths[server.buckets[-1]]
        artifacts["onnx"] = str(onnx_path)
        for b, n in names.items():
            artifacts[f"onnx_b{b}"] = str(stage.final_path(n))
        if fp16 is not None:
            for b in server.buckets:
                artifacts[f"onnx_fp32_b{b}"] = str(stage.final_path(bucket_file(b)))
    artifacts["report"] = str(stage.final_path(REPORT_FILE))
    if (stage.path / (MODEL_FILE + ".data")).exists():
        artifacts["external_data"] = str(stage.final_path(MODEL_FILE + ".data"))
    others = sorted(p.name for p in stage.path.glob("*.onnx.data") if p.name != MODEL_FILE + ".data")
    for name in others:
        artifacts[f"external_data:{name[:-5]}"] = str(stage.final_path(name))
    engines = report.stages.get("engines")
    if engines is not None:
        artifacts["build_script"] = str(stage.final_path(engines["script"]))
        for name in engines.get("engines", []):  # only engines that were built
            artifacts[f"engine:{name}"] = str(stage.final_path(name))
    report.artifacts = artifacts
    return onnx_path, final_server


def _check_dynamic(model: onnx.ModelProto, captured: CapturedGraph, settings: Settings) -> None:
    """Every output dim that follows a dynamic dim in the capture must be symbolic in the ONNX model."""
    shapes = dim_names(model)
    outs = [n for n in captured.base.gm.graph.nodes if n.op == "output"][0].args[0]
    traces = [[n for n in c.gm.graph.nodes if n.op == "output"][0].args[0] for c in captured.captures + captured.checks]
    for k, name in enumerate(captured.output_names):
        seen = [_shape_of(t[k]) for t in traces]
        if not settings.dims or any(s is None for s in seen) or name not in shapes:
            continue
        onnx_shape = shapes[name]
        for d in dynamic_axes(seen):
            if d < len(onnx_shape) and isinstance(onnx_shape[d], int) and onnx_shape[d] > 0:
                raise EmitError(
                    f"output {name!r} dim {d} changes with the input size but is static ({onnx_shape[d]}) in the ONNX model",
                    node=outs[k].name if k < len(outs) else None,
                    hint="a size was baked in during emission; please report this with the model",
                )
    for d in settings.dims:
        for i, axis in d.sites:
            got = shapes[captured.input_names[i]][axis]
            if got != d.name:
                raise EmitError(f"input {captured.input_names[i]!r} dim {axis} should be '{d.name}', is {got!r}")


def _shape_of(node: Any) -> tuple[Any, ...] | None:
    v = node.meta.get("val") if hasattr(node, "meta") else None
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None


def trace(gm, onnx_path: Path, captured: CapturedGraph, settings: Settings,
          sizes: dict[str, int] | None) -> "Divergence | None":
    """Layer-wise search at ``sizes`` (default: the first verification point)."""
    sizes = sizes if sizes is not None else verification_points(settings.dims, captured.traced_low())[0]
    tensors = [t.to(torch.float32) if t.dtype == torch.float64 else t
               for t in inputs_at(captured.example, settings.dims, sizes)]
    feed = {n: t.numpy() for n, t in zip(captured.input_names, tensors)}
    return find_divergence(onnx_path, gm, tensors, feed, settings.atol, settings.rtol)


def onnx_export(model: torch.nn.Module, onnx_path: str | Path, input: torch.Tensor | None = None, opset: int = 17) -> Path:
    """The seed's helper (torchpipe.utils.models.onnx_export): dynamic batch, simplified, verified.

    The default input is ``torch.randn(1, 3, 224, 224)``; the ONNX model lands at ``onnx_path``.
    """
    import os
    import shutil
    import tempfile

    path = Path(onnx_path)
    if input is None:
        input = torch.randn(1, 3, 224, 224)
    with tempfile.TemporaryDirectory(prefix=".fxtrt-export-", dir=path.parent if path.parent.exists() else None) as tmp:
        compiled = compile(model, input, batch=(1, 8, 32), opset=opset, out_dir=Path(tmp) / "out")
        if compiled.buckets is not None:  # the helper promises one dynamic-batch model
            why = compiled.report.stages["buckets"]
            raise StructureError(why["why"], node=why.get("node"), source=why.get("source"),
                                 hint="use fxtrt.compile(...), which serves this model as a static-batch bucket set")
        for extra in compiled.onnx_path.parent.glob(MODEL_FILE + ".data"):
            shutil.move(str(extra), str(path.parent / extra.name))
        os.replace(compiled.onnx_path, path)
    return path
