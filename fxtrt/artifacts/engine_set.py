"""TensorRT engines for an ONNX artifact: always planned, built only where TensorRT can.

After the ONNX artifact (fp32 or fp16) is verified on ONNX Runtime:

1. plan the engines (:func:`fxtrt.backend.tensorrt.plan_engines`: one engine, or with more than
   one dynamic dim one engine per value of the dims not kept dynamic; for a bucket set
   :func:`~fxtrt.backend.tensorrt.plan_buckets`: one engine per static-batch model);
2. always write ``build_engines.sh`` with the trtexec and ``polygraphy run`` commands;
3. only when :func:`~fxtrt.backend.tensorrt.tensorrt_status` says TensorRT and a CUDA device are
   usable: build the engines with Polygraphy's loaders. Verification then compares PyTorch,
   ONNX Runtime and TensorRT on the same feeds with one ``Comparator`` per engine (each engine
   is a part of the :class:`EngineSet`).

Otherwise the stage is "skipped" with the reason, and nothing claims an engine that wasn't built:
the plan lists the engines *to build*, and ``report.artifacts`` lists only files that exist.

Example::

    engines = EngineSet.build(onnx_artifact, Path("out"), settings)
    engines.built, engines.record()["engines"]["plan"]["kind"]   # False, "single" (no GPU here)
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from fxtrt.artifacts.base import Artifact
from fxtrt.backend.buckets import bucket_points
from fxtrt.backend.tensorrt import (
    BUILD_SCRIPT_NAME,
    EnginePlan,
    EngineSpec,
    TensorSpec,
    build_engines,
    plan_buckets,
    plan_engines,
    tensorrt_status,
    trt_runner,
    write_build_script,
)
from fxtrt.backend.verify import Tolerance, VerifyRow, format_rows, ort_meta
from fxtrt.errors import ConfigError, EngineError, VerificationError
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


def engine_for_shapes(engines: Sequence[EngineSpec], shapes: Mapping[str, Sequence[int]]) -> int | None:
    """Index of the first engine whose optimization profile holds every input shape, or None."""
    for i, spec in enumerate(engines):
        if all(p.name in shapes and len(shapes[p.name]) == len(p.min)
               and all(lo <= s <= hi for lo, s, hi in zip(p.min, shapes[p.name], p.max)) for p in spec.inputs):
            return i
    return None


class EngineSetRunner(BaseRunner):
    """Runs each feed on the first built engine whose profile holds its shapes, as a serving
    process with several engines does (TensorRT itself picks none). Needs TensorRT and a GPU."""

    def __init__(self, engines: Sequence[tuple[EngineSpec, Path]], meta: TensorMetadata, name: str = "tensorrt") -> None:
        super().__init__(name=name, prefix="engine-set-runner")
        self.engines = list(engines)
        self._meta = meta
        self._active: dict[int, BaseRunner] = {}

    def activate_impl(self) -> None:
        self._active = {}

    def deactivate_impl(self) -> None:
        for runner in self._active.values():
            runner.deactivate()
        self._active = {}

    def get_input_metadata_impl(self) -> TensorMetadata:
        return self._meta

    def infer_impl(self, feed_dict):
        shapes = {n: tuple(np.shape(a)) for n, a in feed_dict.items()}
        i = engine_for_shapes([s for s, _ in self.engines], shapes)
        if i is None:
            raise ConfigError(f"no built engine runs inputs of shapes {shapes}; engines: "
                              + "; ".join(f"{s.engine_name} ({s.description})" for s, _ in self.engines),
                              hint="pad the input up to a planned size")
        if i not in self._active:
            spec, path = self.engines[i]
            self._active[i] = trt_runner(path, name=spec.engine_name)
            self._active[i].activate()
        start = time.perf_counter()
        out = OrderedDict(self._active[i].infer(feed_dict))
        self.inference_time = time.perf_counter() - start
        return out


class Engine(Artifact):
    """One built engine, the part of an :class:`EngineSet` that one ``Comparator`` checks: against
    PyTorch together with ONNX Runtime on the ONNX it was built from, so a mismatch shows whether
    the ONNX model or the engine is at fault."""

    def __init__(self, spec: EngineSpec, path: Path, owner: Artifact) -> None:
        self.spec, self.path = spec, Path(path)
        self.input_names, self.output_names = owner.input_names, owner.output_names
        self.points, self.tolerance = owner.points, owner.tolerance

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.path,)

    def runner(self) -> BaseRunner:
        return trt_runner(self.path, name="tensorrt")

    def verify_runners(self) -> list[BaseRunner]:
        from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

        ort = OnnxrtRunner(SessionFromOnnx(str(self.spec.onnx_path), providers=["CPUExecutionProvider"]),
                           name="onnxruntime")
        return [ort, self.runner()]

    def serves(self, sizes: Mapping[str, int]) -> bool:
        return self.spec.accepts(sizes)

    def describe(self, sizes: Mapping[str, int]) -> str:
        return self.spec.engine_name

    def moved_to(self, directory: Path) -> "Engine":
        d = Path(directory)
        return Engine(dataclasses.replace(self.spec, onnx_path=d / self.spec.onnx_path.name), d / self.path.name, self)

    def __str__(self) -> str:
        return f"engine {self.spec.engine_name} ({self.spec.description})"


class EngineSet(Artifact):
    """The engines planned for an ONNX artifact (``source``), ``build_engines.sh``, and the engines
    built where TensorRT and a GPU are usable. Checked engine by engine (:meth:`parts`)."""

    def __init__(self, stage: EngineStage, source: Artifact, points: Sequence[Mapping[str, int]],
                 tolerance: Tolerance, root: Path) -> None:
        self.stage, self.source, self.root = stage, source, Path(root)
        self.input_names, self.output_names = source.input_names, source.output_names
        self.points = tuple(dict(p) for p in points)
        self.tolerance = tolerance
        self.notes = () if self.built else (
            f"TensorRT engines were planned but not built ({stage.reason}); "
            f"{BUILD_SCRIPT_NAME} builds them on a machine with TensorRT 10/11 and a GPU",)

    @classmethod
    def build(cls, source: Artifact, directory: Path, settings: Settings) -> "EngineSet":
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
        stage = run_engine_stage(directory, settings, onnx_paths, atol=tolerance.atol, rtol=tolerance.rtol)
        return cls(stage, source, points, tolerance, directory)

    @property
    def built(self) -> bool:
        return self.stage.status == "built"

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.stage.script, *self.stage.built)

    @property
    def primary(self) -> Path:
        return self.stage.built[0] if self.stage.built else self.stage.script

    def runner(self) -> BaseRunner:
        if not self.built:
            raise EngineError(f"the TensorRT engines were planned but not built: {self.stage.reason}", hint=GPU_HINT)
        meta = TensorMetadata()
        for name, m in ort_meta(self.stage.plan.engines[0].onnx_path).items():
            meta.add(name, dtype=m.dtype, shape=[None] * len(m.shape))
        return EngineSetRunner(list(zip(self.stage.plan.engines, self.stage.built)), meta)

    def serves(self, sizes: Mapping[str, int]) -> bool:
        return self.built and any(spec.accepts(sizes) for spec in self.stage.plan.engines)

    def describe(self, sizes: Mapping[str, int]) -> str:
        return next((spec.engine_name for spec in self.stage.plan.engines if spec.accepts(sizes)), "")

    def parts(self) -> Sequence[Artifact]:
        return tuple(Engine(spec, path, self) for spec, path in zip(self.stage.plan.engines, self.stage.built))

    def check(self, rows: Sequence[VerifyRow], divergence: Any = None) -> None:
        raise_engine_mismatch(rows, self.tolerance.atol, self.tolerance.rtol)

    def moved_to(self, directory: Path) -> "EngineSet":
        d = Path(directory)
        plan = dataclasses.replace(self.stage.plan, engines=tuple(
            dataclasses.replace(e, onnx_path=d / e.onnx_path.name) for e in self.stage.plan.engines))
        stage = EngineStage(plan, d / self.stage.script.name, self.stage.status, self.stage.reason,
                            [d / p.name for p in self.stage.built])
        return EngineSet(stage, self.source.moved_to(d), self.points, self.tolerance, d)

    def index(self) -> dict[str, Path]:
        return {"build_script": self.stage.script, **{f"engine:{p.name}": p for p in self.stage.built}}

    def record(self) -> dict[str, dict[str, Any]]:
        return {"engines": self.stage.to_dict(self.root)}

    def __repr__(self) -> str:
        return f"EngineSet({[e.engine_name for e in self.stage.plan.engines]}, {self.stage.status})"
