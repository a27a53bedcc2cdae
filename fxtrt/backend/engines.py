"""``target="tensorrt"`` as a stage of compile(): plan, script, and build where TensorRT can.

After the ONNX model is verified on ONNX Runtime:

1. plan the engines (:func:`fxtrt.backend.tensorrt.plan_engines`: one engine, or with more than
   one dynamic dim one engine per value of the dims not kept dynamic; for a bucket set
   :func:`~fxtrt.backend.tensorrt.plan_buckets`: one engine per static-batch model);
2. always write ``build_engines.sh`` with the trtexec and ``polygraphy run`` commands;
3. only when :func:`~fxtrt.backend.tensorrt.tensorrt_status` says TensorRT and a CUDA device are
   usable: build the engines with Polygraphy's loaders and compare PyTorch, ONNX Runtime and
   TensorRT on the same feeds with one ``Comparator`` per engine.

Otherwise the stage is "skipped" with the reason, and nothing claims an engine that wasn't built:
the plan lists the engines *to build*, and ``report.artifacts`` lists only files that exist.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx

from fxtrt.backend.tensorrt import (
    BUILD_SCRIPT_NAME,
    EnginePlan,
    TensorSpec,
    build_engines,
    plan_buckets,
    plan_engines,
    tensorrt_status,
    trt_runner,
    write_build_script,
)
from fxtrt.backend.verify import VerifyRow, format_rows, run_comparison
from fxtrt.errors import ConfigError, VerificationError
from fxtrt.settings import BATCH_NAME, Settings

log = logging.getLogger(__name__)

GPU_HINT = f"copy the output directory to a machine with TensorRT 10/11 and a GPU and run {BUILD_SCRIPT_NAME}"


@dataclass
class EngineStage:
    """What the engine stage planned, wrote and (maybe) built."""

    plan: EnginePlan
    script: Path
    status: str  # "built" or "skipped"
    reason: str
    built: list[Path] = field(default_factory=list)

    def to_dict(self, root: Path) -> dict[str, Any]:
        plan = self.plan.to_dict()
        for e in plan["engines"]:
            e["onnx"] = _relative(Path(e["onnx"]), root)
        out: dict[str, Any] = {"status": self.status, "reason": self.reason, "plan": plan,
                               "script": _relative(self.script, root)}
        if self.status == "built":
            out["engines"] = [_relative(p, root) for p in self.built]
        else:
            out["hint"] = GPU_HINT
        return out


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


def tensor_specs(onnx_path: Path, batch_sites: Sequence[tuple[int, int]] = ()) -> list[TensorSpec]:
    """The model's inputs as the engine planner sees them: static dims as ints, dynamic dims by
    name. ``batch_sites`` (input index, axis) names a static model's batch axes "batch", so one
    description serves every bucket."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for i, vi in enumerate(v for v in model.graph.input if v.name not in inits):
        tt = vi.type.tensor_type
        dims: list[int | str] = []
        for d in tt.shape.dim:
            if d.HasField("dim_param"):
                dims.append(d.dim_param)
            elif d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            else:
                raise ConfigError(f"input {vi.name!r} of {onnx_path.name} has a dim with neither a size nor a name",
                                  hint="TensorRT profiles need every dynamic dim named")
        for j, axis in batch_sites:
            if j == i:
                dims[axis] = BATCH_NAME
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        specs.append(TensorSpec(vi.name, tuple(dims), dtype))
    return specs


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


def verify_engines(
    stage: EngineStage,
    feeds: Sequence[tuple[dict[str, int], dict[str, np.ndarray]]],
    reference: Callable[[], Any],
    atol: float,
    rtol: float,
) -> list[VerifyRow]:
    """PyTorch, ONNX Runtime and TensorRT on the same feeds, one Comparator per engine.

    Each engine gets the feeds whose sizes it accepts (its fixed sizes, its profile's ranges).
    ``reference`` makes a fresh PyTorch runner. Needs TensorRT and a GPU.
    """
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    rows: list[VerifyRow] = []
    for spec, path in zip(stage.plan.engines, stage.built):
        mine = [(sizes, feed) for sizes, feed in feeds if spec.accepts(sizes)]
        if not mine:
            log.warning("no verification point falls in engine %s (%s)", spec.engine_name, spec.description)
            continue
        ort = OnnxrtRunner(SessionFromOnnx(str(spec.onnx_path), providers=["CPUExecutionProvider"]),
                           name="onnxruntime")
        trt = trt_runner(path, name="tensorrt")
        for row in run_comparison([reference(), ort, trt], mine, atol, rtol):
            rows.append(VerifyRow(row.sizes, row.output, row.shape, row.max_abs, row.max_rel, row.passed,
                                  f"{spec.engine_name}: {row.note}"))
    return rows


def raise_engine_mismatch(rows: Sequence[VerifyRow], atol: float, rtol: float) -> None:
    """VerificationError when a built engine doesn't match the original model."""
    bad = [r for r in rows if not r.passed]
    if bad:
        raise VerificationError(
            f"the TensorRT engines do not match the original at {len(bad)} of {len(rows)} checks "
            f"(|a-b| <= {atol:g} + {rtol:g}*|ref|):\n{format_rows(rows)}",
            rows=list(rows), node=bad[0].note.split(":")[0] or None,
            hint=f"rebuild that engine with the polygraphy command in {BUILD_SCRIPT_NAME} and --verbose to see why",
        )
