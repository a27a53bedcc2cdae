"""What a TensorRT engine plan is made of: the model's inputs, each engine's profile, the plan.

These records are shared by the planner (:mod:`.plan`), the checks it runs (:mod:`.checks`),
the script writer (:mod:`.script`) and the loaders and runners (:mod:`.loader`, :mod:`.runner`),
so they sit below all of them.

Example::

    tensor_specs(Path("out/model.onnx"))   # [TensorSpec("x", ("batch", 3, 224, 224), "float32")]
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from fxtrt.backend.graph_inputs import graph_inputs
from fxtrt.errors import ConfigError
from fxtrt.settings import BATCH_NAME

ENGINE_SUFFIX = ".engine"
TIMING_CACHE_NAME = "timing.cache"
BUILD_SCRIPT_NAME = "build_engines.sh"
PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class TensorSpec:
    """One model input: static dims are ints, dynamic dims are their names ("batch", "T")."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    @property
    def dynamic_dims(self) -> tuple[str, ...]:
        return tuple(d for d in self.shape if isinstance(d, str))

    def resolve(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """The concrete shape at ``sizes`` (dim name -> size)."""
        return tuple(sizes[d] if isinstance(d, str) else int(d) for d in self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class InputProfile:
    """min/opt/max shape of one input in one engine's optimization profile.

    ``dynamic`` says whether the ONNX input has a symbolic dim; only those get shape flags on
    the command line (trtexec refuses shapes for a fully static model).
    """

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]
    dynamic: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "min": list(self.min), "opt": list(self.opt), "max": list(self.max),
                "dynamic": self.dynamic}


@dataclass(frozen=True)
class EngineSpec:
    """One engine to build: from which ONNX, into which file, for which shapes."""

    onnx_path: Path
    engine_name: str
    inputs: tuple[InputProfile, ...]
    fixed: tuple[tuple[str, int], ...]
    ranges: tuple[tuple[str, tuple[int, int, int]], ...]
    description: str

    @property
    def is_static(self) -> bool:
        return all(p.min == p.max for p in self.inputs)

    def accepts(self, sizes: Mapping[str, int]) -> bool:
        """Whether this engine runs at ``sizes`` (dim name -> size); unnamed dims are ignored."""
        for d, v in self.fixed:
            if d in sizes and sizes[d] != v:
                return False
        for d, (lo, _, hi) in self.ranges:
            if d in sizes and not lo <= sizes[d] <= hi:
                return False
        return True

    def to_dict(self) -> dict[str, Any]:
        return {
            "onnx": str(self.onnx_path),
            "engine": self.engine_name,
            "description": self.description,
            "fixed": dict(self.fixed),
            "ranges": {d: list(r) for d, r in self.ranges},
            "inputs": [p.to_dict() for p in self.inputs],
        }


@dataclass(frozen=True)
class EnginePlan:
    """Every engine for one model.

    ``kind`` is "single" (one engine), "split" (one engine per value of the discretised dims)
    or "buckets" (one static-batch engine per static-batch ONNX).
    """

    kind: str
    engines: tuple[EngineSpec, ...]
    keep_dynamic: str | None
    split: tuple[tuple[str, tuple[int, ...]], ...]

    def engine_for(self, sizes: Mapping[str, int]) -> EngineSpec:
        """The first engine that runs at ``sizes``; ConfigError when none does."""
        for spec in self.engines:
            if spec.accepts(sizes):
                return spec
        raise ConfigError(
            f"no planned engine runs at {dict(sizes)}; engines: "
            + "; ".join(f"{e.engine_name} ({e.description})" for e in self.engines),
            hint="pad the input up to a planned size, or pass split=... with the sizes you need",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "keep_dynamic": self.keep_dynamic,
            "split": {d: list(v) for d, v in self.split},
            "engines": [e.to_dict() for e in self.engines],
        }


def tensor_specs(onnx_path: Path, batch_sites: Sequence[tuple[int, int]] = ()) -> list[TensorSpec]:
    """The model's inputs as the engine planner sees them: static dims as ints, dynamic dims by
    name. ``batch_sites`` (input index, axis) names a static model's batch axes "batch", so one
    description serves every bucket."""
    specs = []
    for i, gi in enumerate(graph_inputs(Path(onnx_path))):
        if any(d is None for d in gi.dims):
            raise ConfigError(f"input {gi.name!r} of {Path(onnx_path).name} has a dim with neither a size nor a name",
                              hint="TensorRT profiles need every dynamic dim named")
        dims: list[int | str] = [d if isinstance(d, str) else int(d) for d in gi.dims]  # type: ignore[arg-type]
        for j, axis in batch_sites:
            if j == i:
                dims[axis] = BATCH_NAME
        specs.append(TensorSpec(gi.name, tuple(dims), gi.numpy_dtype.name))
    return specs
