"""``fxtrt.compile``: frontend → passes → backend → report, in that order and no other."""
from __future__ import annotations

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
from fxtrt.backend.cleanup import cleanup, save_onnx
from fxtrt.backend.divergence import Divergence, find_divergence
from fxtrt.backend.emit import dim_names, emit_onnx
from fxtrt.backend.verify import TorchRunner, VerifyRow, raise_on_failure, run_comparison
from fxtrt.errors import ConfigError, EmitError
from fxtrt.frontend.capture import CapturedGraph, capture
from fxtrt.frontend.inputs import inputs_at, verification_sizes
from fxtrt.debug import PassDebugger
from fxtrt.passes import PassContext, resolve, run_passes
from fxtrt.report import Report
from fxtrt.settings import DynamicDim, Settings, make_settings, normalize_inputs

log = logging.getLogger("fxtrt")

MODEL_FILE = "model.onnx"
REPORT_FILE = "report.json"


class CompiledModel:
    """The verified artifact: its ONNX path, its report, and ways to run it."""

    def __init__(self, onnx_path: Path, report: Report, captured: CapturedGraph, settings: Settings,
                 graph_module: torch.fx.GraphModule | None = None) -> None:
        self.onnx_path = onnx_path
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
        """Run with ONNX Runtime (CPU). Inputs are torch tensors or numpy arrays."""
        if len(inputs) != len(self.input_names):
            raise ConfigError(f"expected {len(self.input_names)} input(s) ({', '.join(self.input_names)}), got {len(inputs)}")
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
def _stage(report: Report, name: str, step: int, total: int) -> Iterator[None]:
    log.info("[%d/%d] %s ...", step, total, name)
    start = time.perf_counter()
    try:
        yield
    finally:
        report.timings[name] = time.perf_counter() - start
    log.info("[%d/%d] %s done in %.1fs", step, total, name, report.timings[name])


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
) -> CompiledModel:
    """Compile ``model`` to an ONNX model that serves every size in ``batch`` / ``dynamic``.

    Either the result matches the original at min, opt, max and an odd size of every dynamic
    dim, or an ``FxtrtError`` says which node and which line of the user's code is at fault.

    ``debug_dir`` gets a dump of the graph after every pass and turns on a numeric check after
    each one (it is written as the run goes, failures included). ``trace_divergence`` runs the
    layer-wise ONNX-vs-FX comparison even when verification passes; it always runs on failure.
    """
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = normalize_inputs(example_inputs)
    settings = make_settings(
        model, inputs, batch=batch, batch_dims=batch_dims, dynamic=dynamic, out_dir=out_dir, opset=opset,
        target=target, precision=precision, passes=passes, verify=verify, atol=atol, rtol=rtol,
        debug_dir=debug_dir, trace_divergence=trace_divergence,
    )
    pipeline = resolve(settings.passes)
    report = Report(model=type(model).__name__, settings=settings.to_dict())
    total = 5 if settings.verify else 4

    with ArtifactDir(settings.out_dir) as stage:
        with _stage(report, "capture", 1, total):
            captured = capture(model, inputs, settings)
        report.notes += captured.notes

        with _stage(report, "passes", 2, total):
            observer = None
            if settings.debug_dir is not None:
                observer = PassDebugger(settings.debug_dir, model, captured, settings)
            gm, report.passes = run_passes(captured.base.gm, PassContext(settings, captured), pipeline, observer)

        with _stage(report, "emit", 3, total):
            emitted = emit_onnx(gm, captured.base.inputs, settings.dims, captured.input_names,
                                captured.output_names, settings.opset)
            report.notes += emitted.notes

        with _stage(report, "cleanup", 4, total):
            cleaned = cleanup(emitted.model, size_limit=settings.external_data_threshold)
            report.notes += cleaned.notes
            report.ops_before, report.ops_after = cleaned.ops_before, cleaned.ops_after
            _check_dynamic(cleaned.model, captured, settings)
            report.io = dim_names(cleaned.model)
            staged = stage.path / MODEL_FILE
            save_onnx(cleaned.model, staged, settings.external_data_threshold)

        if settings.verify:
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

        onnx_path = stage.final_path(MODEL_FILE)
        report.artifacts = {"onnx": str(onnx_path), "report": str(stage.final_path(REPORT_FILE))}
        if (stage.path / (MODEL_FILE + ".data")).exists():
            report.artifacts["external_data"] = str(stage.final_path(MODEL_FILE + ".data"))
        report.write(stage.path / REPORT_FILE)
    log.info("artifacts in %s", stage.final)
    return CompiledModel(onnx_path, report, captured, settings, graph_module=gm)


def _check_dynamic(model: onnx.ModelProto, captured: CapturedGraph, settings: Settings) -> None:
    """Every dim that changed between the traces must be symbolic in the ONNX model."""
    if len(captured.captures) < 2:
        return
    shapes = dim_names(model)
    outs = [n for n in captured.base.gm.graph.nodes if n.op == "output"][0].args[0]
    per_capture = []
    for cap in captured.captures:
        out_node = [n for n in cap.gm.graph.nodes if n.op == "output"][0]
        per_capture.append([_shape_of(a) for a in out_node.args[0]])
    for k, name in enumerate(captured.output_names):
        seen = [p[k] for p in per_capture]
        if any(s is None for s in seen) or name not in shapes:
            continue
        onnx_shape = shapes[name]
        for d in range(len(seen[0])):
            if len({s[d] for s in seen}) > 1 and d < len(onnx_shape) and isinstance(onnx_shape[d], int) and onnx_shape[d] > 0:
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


def _shape_of(node: Any) -> tuple[int, ...] | None:
    v = node.meta.get("val") if hasattr(node, "meta") else None
    if not isinstance(v, torch.Tensor) or not all(isinstance(s, int) for s in v.shape):
        return None
    return tuple(v.shape)


def verification_points(dims: Sequence[DynamicDim]) -> list[dict[str, int]]:
    """Batch at min/opt/odd/max with other dims at opt, then the corners of the other dims' extremes."""
    if not dims:
        return [{}]
    opt = {d.name: d.opt for d in dims}
    first, rest = dims[0], dims[1:]
    points = [{**opt, first.name: s} for s in verification_sizes(first)]
    for d in rest:
        for s in sorted({d.min, d.max}):
            for f in sorted({first.min, first.max}):
                points.append({**opt, d.name: s, first.name: f})
    unique = []
    for p in points:
        if p not in unique:
            unique.append(p)
    return unique


def trace(gm, onnx_path: Path, captured: CapturedGraph, settings: Settings,
          sizes: dict[str, int] | None) -> "Divergence | None":
    """Layer-wise search at ``sizes`` (default: the first verification point)."""
    sizes = sizes if sizes is not None else verification_points(settings.dims)[0]
    tensors = [t.to(torch.float32) if t.dtype == torch.float64 else t
               for t in inputs_at(captured.example, settings.dims, sizes)]
    feed = {n: t.numpy() for n, t in zip(captured.input_names, tensors)}
    return find_divergence(onnx_path, gm, tensors, feed, settings.atol, settings.rtol)


def verify_model(model: torch.nn.Module, onnx_path: Path, captured: CapturedGraph, settings: Settings) -> list[VerifyRow]:
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    feeds = []
    for sizes in verification_points(settings.dims):
        tensors = inputs_at(captured.example, settings.dims, sizes)
        feed = {n: (t.to(torch.float32) if t.dtype == torch.float64 else t).numpy()
                for n, t in zip(captured.input_names, tensors)}
        feeds.append((sizes, feed))
    ort = OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=["CPUExecutionProvider"]), name="onnxruntime")
    meta = ort_meta(onnx_path)
    torch_runner = TorchRunner(model, captured.input_names, [t.dtype for t in captured.example],
                               captured.output_names, meta)
    return run_comparison([torch_runner, ort], feeds, settings.atol, settings.rtol)


def ort_meta(onnx_path: Path):
    """Input metadata for the torch runner: the ONNX inputs' names, dtypes and shapes."""
    from polygraphy.common import TensorMetadata

    model = onnx.load(str(onnx_path), load_external_data=False)
    meta = TensorMetadata()
    for vi in model.graph.input:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        shape = [d.dim_param or d.dim_value or None for d in vi.type.tensor_type.shape.dim]
        meta.add(vi.name, dtype=dtype, shape=shape)
    return meta


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
        for extra in compiled.onnx_path.parent.glob(MODEL_FILE + ".data"):
            shutil.move(str(extra), str(path.parent / extra.name))
        os.replace(compiled.onnx_path, path)
    return path
