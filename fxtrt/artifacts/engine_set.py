"""TensorRT engines for an ONNX artifact, always planned, built only where TensorRT can: the record.

The engines stage (:mod:`fxtrt.stages.engines`) makes it, after the ONNX artifact (fp32 or
fp16) is verified on ONNX Runtime:

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

    engines = fxtrt.stages.engines.build(onnx_artifact, Path("out"), settings)
    engines.built, engines.record()["engines"]["plan"]["kind"]   # False, "single" (no GPU here)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from polygraphy.backend.base import BaseRunner

from fxtrt.artifacts.base import Artifact
from fxtrt.backend.tensorrt import BUILD_SCRIPT_NAME, EnginePlan, EngineSpec, trt_runner
from fxtrt.backend.graph_inputs import input_metadata
from fxtrt.backend.onnxruntime import SessionLoader, onnxrt_runner
from fxtrt.backend.tensorrt.readiness import readiness_lines
from fxtrt.backend.tensorrt.runner import EngineSetRunner
from fxtrt.backend.verify import VerifyRow, format_rows
from fxtrt.compare import Tolerance
from fxtrt.errors import EngineError, VerificationError

GPU_HINT = f"copy the output directory to a machine with TensorRT 10/11 and a GPU and run {BUILD_SCRIPT_NAME}"


@dataclass
class EngineStage:
    """What the engine stage planned, wrote and (maybe) built."""

    plan: EnginePlan
    script: Path
    status: str  # "built" or "skipped"
    reason: str
    built: list[Path] = field(default_factory=list)
    readiness: dict[str, Any] = field(default_factory=dict)

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
        if self.readiness:
            out["readiness"] = self.readiness
        return out


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


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
        return [onnxrt_runner(SessionLoader(self.spec.onnx_path), name="onnxruntime"), self.runner()]

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
        meta = input_metadata(self.stage.plan.engines[0].onnx_path, all_dynamic=True)
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
                            [d / p.name for p in self.stage.built], self.stage.readiness)
        return EngineSet(stage, self.source.moved_to(d), self.points, self.tolerance, d)

    def index(self) -> dict[str, Path]:
        return {"build_script": self.stage.script, **{f"engine:{p.name}": p for p in self.stage.built}}

    def record(self) -> dict[str, dict[str, Any]]:
        return {"engines": self.stage.to_dict(self.root)}

    @property
    def verifiable(self) -> bool:
        return self.built

    stage_text = {"engines": lambda name, stage: engines_text(name, stage)}

    def __repr__(self) -> str:
        return f"EngineSet({[e.engine_name for e in self.stage.plan.engines]}, {self.stage.status})"


def engines_text(name: str, stage: dict[str, Any]) -> list[str]:
    """The report's text for ``stages["engines"]``: built or skipped, the plan, the script, readiness."""
    plan = stage.get("plan", {})
    engines = plan.get("engines", [])
    if stage.get("status") == "built":
        out = [f"{name}: built {len(engines)} TensorRT engine(s) ({stage.get('reason')})"]
    else:
        out = [f"{name}: skipped, {len(engines)} engine(s) planned and none built: {stage.get('reason')}"]
    split = ", ".join(f"{d} discretised to {v}" for d, v in plan.get("split", {}).items())
    if plan.get("kind") == "split":
        out.append(f"  plan: {plan.get('keep_dynamic')} dynamic, {split}")
    elif plan.get("kind") == "buckets":
        out.append(f"  plan: one static-batch engine per bucket ({split})")
    else:
        out.append(f"  plan: one engine, {plan.get('keep_dynamic') or 'static shapes'}"
                   + (" dynamic" if plan.get("keep_dynamic") else ""))
    width = max((len(e["engine"]) for e in engines), default=0)
    for e in engines:
        out.append(f"  {e['engine']:<{width}}  {e['description']}  (from {e['onnx']})")
    if stage.get("status") == "built":
        out.append(f"  {stage.get('script')}: rebuilds them")
    else:
        out.append(f"  {stage.get('script')}: builds and checks them on a machine with TensorRT 10/11 and a GPU")
    if stage.get("readiness"):
        out.append("  ONNX parser readiness (operator tables, checked without TensorRT):")
        out += ["  " + line for line in readiness_lines(stage["readiness"])]
    return out
