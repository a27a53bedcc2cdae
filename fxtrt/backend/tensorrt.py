"""Plan TensorRT engines for a dynamic ONNX model, build them with Polygraphy, and write a
portable ``build_engines.sh`` for machines where fxtrt cannot build them itself.

Precision: every network is parsed *strongly typed*, so the engine computes in exactly the
types the ONNX graph declares (``fp16.py`` puts fp16 into the graph). TensorRT 11 has no
precision flags at all, and on TensorRT 10 strong typing gives the same engine, so no fp16
flag is ever set, in Python or on the command line. ``STRONGLY_TYPED`` / ``--stronglyTyped``
are required for this on 10.x and accepted (ignored, always on) by 11.x.

Shapes: one dynamic dim gives one engine with one optimization profile. With more than one,
TensorRT optimises for the whole box of shapes and gets slower (the seed measured 9 ms with
batch and length both dynamic against 4.6 ms with batch fixed), so one dim stays dynamic
(``keep_dynamic``, the batch by default) and every other one is discretised: one engine per
value, each with that dim fixed. :func:`default_split_values` says which values.

Nothing here imports ``tensorrt`` until an engine is actually built: Polygraphy's loaders are
lazy callables, and :func:`tensorrt_status` is the only place that tries the import on purpose.

Example::

    plan = plan_engines(Path("out/model.onnx"),
                        [TensorSpec("x", ("batch", "T", 80), "float32")],
                        {"batch": (1, 8, 32), "T": (20, 1000, 2000)})
    write_build_script(plan, Path("out"))          # always possible
    ok, why = tensorrt_status()
    if ok:
        build_engines(plan, Path("out"))           # needs TensorRT and a GPU
"""
from __future__ import annotations

import importlib
import itertools
import logging
import os
import re
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx

from fxtrt.errors import ConfigError, EngineError

log = logging.getLogger(__name__)

ENGINE_SUFFIX = ".engine"
TIMING_CACHE_NAME = "timing.cache"
BUILD_SCRIPT_NAME = "build_engines.sh"
PARTIAL_SUFFIX = ".partial"
# A power of two this close (relative) to min, opt or max adds nothing: 1024 next to opt=1000.
_NEAR_ANCHOR = 1 / 8
# Characters that trtexec's ``name:AxB,...`` and Polygraphy's ``name:[A,B]`` syntax can't carry.
_BAD_NAME = re.compile(r"[\s:,\[\]'\"=]")


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


@dataclass(frozen=True)
class BuildCommand:
    """One engine-building command read back from ``build_engines.sh``."""

    tool: str  # "trtexec" or "polygraphy"
    onnx: str
    engine: str  # the final file name, after the script renames the partial file
    min: dict[str, tuple[int, ...]]
    opt: dict[str, tuple[int, ...]]
    max: dict[str, tuple[int, ...]]
    argv: tuple[str, ...]


# --------------------------------------------------------------------------- planning


def default_split_values(lo: int, opt: int, hi: int) -> tuple[int, ...]:
    """Sizes to build engines for when a dim with range (lo, opt, hi) is discretised.

    Rule: ``lo``, ``opt`` and ``hi`` themselves, plus every power of two strictly between
    ``lo`` and ``hi`` that is not within 1/8 of one of those three (``1024`` adds nothing next
    to ``opt=1000``). So ``(20, 1000, 2000)`` gives ``(20, 32, 64, 128, 256, 512, 1000, 2000)``:
    at most ``log2(hi/lo) + 3`` engines, spaced so that padding a request up to the next size
    wastes at most half the work.
    """
    anchors = {lo, opt, hi}
    values = set(anchors)
    p = 1
    while p < hi:
        if p > lo and all(abs(p - a) > _NEAR_ANCHOR * a for a in anchors):
            values.add(p)
        p *= 2
    return tuple(sorted(values))


def _check_ranges(ranges: Mapping[str, tuple[int, int, int]], needed: Sequence[str]) -> None:
    for d in needed:
        if d not in ranges:
            raise ConfigError(
                f"dynamic dim {d!r} has no (min, opt, max) range; ranges given for {sorted(ranges)}",
                hint=f"pass ranges={{{d!r}: (min, opt, max), ...}}",
            )
        r = ranges[d]
        if (len(tuple(r)) != 3 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in r)
                or not 1 <= r[0] <= r[1] <= r[2]):
            raise ConfigError(f"range of dim {d!r} must be three ints with 1 <= min <= opt <= max, got {r!r}")


def _check_specs(inputs: Sequence[TensorSpec]) -> None:
    if not inputs:
        raise ConfigError("a TensorRT engine needs at least one input")
    seen: set[str] = set()
    for spec in inputs:
        if spec.name in seen:
            raise ConfigError(f"input {spec.name!r} is listed twice")
        seen.add(spec.name)
        if not spec.name or _BAD_NAME.search(spec.name):
            raise ConfigError(
                f"input name {spec.name!r} can't be written in trtexec/Polygraphy shape flags",
                hint="name inputs with letters, digits, '_', '.' or '-' only",
            )
        for d in spec.shape:
            if isinstance(d, str):
                if not d or _BAD_NAME.search(d):
                    raise ConfigError(f"input {spec.name!r} has an unusable dim name {d!r}")
            elif not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 0:
                raise ConfigError(f"input {spec.name!r} has an invalid static dim {d!r}")


def _onnx_inputs(onnx_path: Path) -> dict[str, tuple[str, tuple[int | str | None, ...]]]:
    """name -> (numpy dtype name, dims) for the ONNX graph inputs that are not initializers."""
    if not onnx_path.is_file():
        raise ConfigError(f"ONNX model {onnx_path} does not exist")
    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    out: dict[str, tuple[str, tuple[int | str | None, ...]]] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).name if tt.elem_type else "?"
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param if d.HasField("dim_param") else None)
            for d in tt.shape.dim
        )
        out[vi.name] = (dtype, dims)
    return out


def _check_against_onnx(onnx_path: Path, specs: Sequence[TensorSpec]) -> None:
    """Profiles for inputs the ONNX doesn't have fail only on the GPU machine; fail here instead."""
    actual = _onnx_inputs(onnx_path)
    names = [s.name for s in specs]
    if sorted(actual) != sorted(names):
        raise ConfigError(
            f"{onnx_path.name} has inputs {sorted(actual)} but the plan describes {sorted(names)}"
        )
    for s in specs:
        dtype, dims = actual[s.name]
        if dtype != s.dtype:
            raise ConfigError(f"{onnx_path.name}: input {s.name!r} is {dtype}, the plan says {s.dtype}")
        if len(dims) != len(s.shape):
            raise ConfigError(
                f"{onnx_path.name}: input {s.name!r} has rank {len(dims)}, the plan says {len(s.shape)} {list(s.shape)}"
            )
        for axis, (got, want) in enumerate(zip(dims, s.shape)):
            if isinstance(want, str) and isinstance(got, int) and got > 0:
                raise ConfigError(
                    f"{onnx_path.name}: dim {axis} of input {s.name!r} is static ({got}) but the plan treats it as "
                    f"dynamic {want!r}",
                    hint="re-export the model with that dim dynamic, or drop it from the dynamic dims",
                )
            if isinstance(want, int) and isinstance(got, int) and got > 0 and got != want:
                raise ConfigError(f"{onnx_path.name}: dim {axis} of input {s.name!r} is {got}, the plan says {want}")


def _tag(dim: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "", dim) or "d"


def _describe(fixed: Sequence[tuple[str, int]], ranges: Sequence[tuple[str, tuple[int, int, int]]]) -> str:
    parts = [f"{d} {lo}..{hi} (opt {opt})" for d, (lo, opt, hi) in ranges]
    parts += [f"{d} = {v}" for d, v in fixed]
    return ", ".join(parts) if parts else "static shapes"


def _profiles(
    specs: Sequence[TensorSpec],
    fixed: Mapping[str, int],
    ranges: Mapping[str, tuple[int, int, int]],
) -> tuple[InputProfile, ...]:
    out = []
    for s in specs:
        lo = {**{d: r[0] for d, r in ranges.items()}, **fixed}
        opt = {**{d: r[1] for d, r in ranges.items()}, **fixed}
        hi = {**{d: r[2] for d, r in ranges.items()}, **fixed}
        out.append(InputProfile(s.name, s.resolve(lo), s.resolve(opt), s.resolve(hi), dynamic=bool(s.dynamic_dims)))
    return tuple(out)


def _dynamic_dims(specs: Sequence[TensorSpec]) -> list[str]:
    """Dynamic dim names in order of first appearance, so plans are deterministic."""
    dims: list[str] = []
    for s in specs:
        for d in s.dynamic_dims:
            if d not in dims:
                dims.append(d)
    return dims


def plan_engines(
    onnx_path: Path,
    inputs: Sequence[TensorSpec],
    ranges: Mapping[str, tuple[int, int, int]],
    *,
    keep_dynamic: str = "batch",
    split: Mapping[str, Sequence[int]] | None = None,
) -> EnginePlan:
    """Engines for one dynamic ONNX model.

    At most one dynamic dim: one engine whose profile spans every range. More than one: the
    dim ``keep_dynamic`` stays dynamic and each other dim is discretised into
    :func:`default_split_values` (or ``split[dim]``), one engine per combination, named like
    ``model_T1000.engine``. ``split`` may also name a dim to discretise when it is the only
    dynamic one (a dynamic ONNX built as fixed-size engines).
    """
    onnx_path = Path(onnx_path)
    _check_specs(inputs)
    dims = _dynamic_dims(inputs)
    _check_ranges(ranges, dims)
    _check_against_onnx(onnx_path, inputs)
    split = dict(split or {})

    for d in split:
        if d not in dims:
            raise ConfigError(f"split names {d!r}, which is not a dynamic dim of the inputs (dynamic dims: {dims})")
    if len(dims) > 1:
        if keep_dynamic not in dims:
            raise ConfigError(
                f"keep_dynamic={keep_dynamic!r} is not a dynamic dim; the inputs have dynamic dims {dims}",
                hint=f"pass keep_dynamic= one of {dims}: the dim that varies most from call to call",
            )
        if keep_dynamic in split:
            raise ConfigError(f"dim {keep_dynamic!r} can't be both kept dynamic and split")
        discrete = [d for d in dims if d != keep_dynamic]
    else:
        discrete = [d for d in dims if d in split]

    values: dict[str, tuple[int, ...]] = {}
    for d in discrete:
        lo, opt, hi = ranges[d]
        if d in split:
            vals = tuple(sorted({int(v) for v in split[d]}))
            if not vals:
                raise ConfigError(f"split[{d!r}] is empty")
            bad = [v for v in vals if not lo <= v <= hi]
            if bad:
                raise ConfigError(
                    f"split[{d!r}] has sizes {bad} outside the range {lo}..{hi} that is verified",
                    hint=f"widen the range of {d!r} or drop those sizes",
                )
        else:
            vals = default_split_values(lo, opt, hi)
        values[d] = vals

    dynamic = [d for d in dims if d not in values]
    dyn_ranges = tuple((d, tuple(int(v) for v in ranges[d])) for d in dynamic)
    engines = []
    for combo in itertools.product(*(values[d] for d in discrete)):
        fixed = tuple(zip(discrete, (int(v) for v in combo)))
        name = onnx_path.stem + "".join(f"_{_tag(d)}{v}" for d, v in fixed) + ENGINE_SUFFIX
        engines.append(EngineSpec(
            onnx_path=onnx_path,
            engine_name=name,
            inputs=_profiles(inputs, dict(fixed), dict(dyn_ranges)),
            fixed=fixed,
            ranges=dyn_ranges,  # type: ignore[arg-type]
            description=_describe(fixed, dyn_ranges),  # type: ignore[arg-type]
        ))
    _check_unique(engines)
    plan = EnginePlan(
        kind="split" if discrete else "single",
        engines=tuple(engines),
        keep_dynamic=keep_dynamic if len(dims) > 1 else (dims[0] if dynamic else None),
        split=tuple((d, values[d]) for d in discrete),
    )
    log.info("planned %d TensorRT engine(s) for %s: %s", len(engines), onnx_path.name,
             "; ".join(e.description for e in engines))
    return plan


def plan_buckets(
    onnx_paths_by_batch: Mapping[int, Path],
    inputs: Sequence[TensorSpec],
    ranges: Mapping[str, tuple[int, int, int]] | None = None,
    *,
    batch_dim: str = "batch",
) -> EnginePlan:
    """One engine per static-batch ONNX (the seed's "load batch 1, 4 and 8 as one dynamic model").

    ``inputs`` describe the model with ``batch_dim`` symbolic; each bucket substitutes its batch
    size. Any other dynamic dim keeps its range from ``ranges`` in every bucket's profile.
    Engines are named ``<onnx stem>_b<batch>.engine`` (the stem is used as is when it already
    ends in ``_b<batch>``).
    """
    if not onnx_paths_by_batch:
        raise ConfigError("plan_buckets needs at least one (batch size, ONNX path)")
    _check_specs(inputs)
    if not any(batch_dim in s.dynamic_dims for s in inputs):
        raise ConfigError(f"no input has the dim {batch_dim!r}; inputs: {[s.to_dict() for s in inputs]}")
    ranges = dict(ranges or {})
    others = [d for d in _dynamic_dims(inputs) if d != batch_dim]
    _check_ranges(ranges, others)
    dyn_ranges = tuple((d, tuple(int(v) for v in ranges[d])) for d in others)

    engines = []
    for b in sorted(onnx_paths_by_batch):
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
            raise ConfigError(f"bucket batch sizes must be ints >= 1, got {b!r}")
        path = Path(onnx_paths_by_batch[b])
        specs = [TensorSpec(s.name, tuple(int(b) if d == batch_dim else d for d in s.shape), s.dtype) for s in inputs]
        _check_against_onnx(path, specs)
        stem = path.stem if path.stem.endswith(f"_b{b}") else f"{path.stem}_b{b}"
        fixed = ((batch_dim, int(b)),)
        engines.append(EngineSpec(
            onnx_path=path,
            engine_name=stem + ENGINE_SUFFIX,
            inputs=_profiles(specs, {}, dict(dyn_ranges)),
            fixed=fixed,
            ranges=dyn_ranges,  # type: ignore[arg-type]
            description=_describe(fixed, dyn_ranges),  # type: ignore[arg-type]
        ))
    _check_unique(engines)
    return EnginePlan(
        kind="buckets",
        engines=tuple(engines),
        keep_dynamic=None,
        split=((batch_dim, tuple(int(b) for b in sorted(onnx_paths_by_batch))),),
    )


def _check_unique(engines: Sequence[EngineSpec]) -> None:
    names = [e.engine_name for e in engines]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"two engines would be written to the same file: {dup}",
                          hint="give each bucket's ONNX a distinct file name")


# --------------------------------------------------------------------------- TensorRT via Polygraphy


def tensorrt_status() -> tuple[bool, str]:
    """(usable, reason): whether TensorRT imports *and* can create a builder on a CUDA device.

    Never raises. Uses a plain import (not Polygraphy's lazy importer, which may be set to
    install packages) and creates one ``trt.Builder``, which fails without a usable GPU.
    """
    try:
        trt = importlib.import_module("tensorrt")
    except BaseException as exc:  # ImportError, OSError from a missing libnvinfer, SystemExit from stubs
        if isinstance(exc, KeyboardInterrupt):
            raise
        return False, f"import tensorrt failed: {type(exc).__name__}: {exc}"
    version = str(getattr(trt, "__version__", "unknown"))
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = -1
    if 0 <= major < 10:
        return False, f"TensorRT {version} is too old: fxtrt needs TensorRT 10 or 11 (strongly typed networks)"
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except Exception as exc:
        return False, f"no CUDA device: TensorRT {version} could not create a builder ({type(exc).__name__}: {exc})"
    if builder is None:
        return False, f"no CUDA device: TensorRT {version} could not create a builder"
    del builder
    return True, f"TensorRT {version}"


def polygraphy_profile(spec: EngineSpec) -> Any:
    """The Polygraphy ``Profile`` for one engine: min/opt/max for every input."""
    from polygraphy.backend.trt import Profile

    profile = Profile()
    for p in spec.inputs:
        profile.add(p.name, min=p.min, opt=p.opt, max=p.max)
    return profile


def polygraphy_loaders(plan: EnginePlan, timing_cache: Path) -> list[tuple[EngineSpec, Callable[[], Any]]]:
    """Per engine, a lazy Polygraphy loader that returns the *serialized* engine when called.

    ``NetworkFromOnnxPath(strongly_typed=True)`` -> ``EngineBytesFromNetwork(config=CreateConfig(
    profiles=[...], load_timing_cache=...), save_timing_cache=...)``. Bytes rather than
    ``EngineFromNetwork``: the bytes are what gets saved, and deserialising only to serialise
    again costs time and GPU memory; :func:`trt_runner` turns them into a runnable engine.
    Building nothing and importing no TensorRT until called.
    """
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath
    from polygraphy.logger import G_LOGGER

    out: list[tuple[EngineSpec, Callable[[], Any]]] = []
    for spec in plan.engines:
        network = NetworkFromOnnxPath(str(spec.onnx_path), strongly_typed=True)
        # tf32=False: fp32 layers compute in fp32, as eager PyTorch does by default on CPU.
        # (CreateConfig logs an info line about TF32 per instance; that is noise here.)
        with G_LOGGER.verbosity(G_LOGGER.WARNING):
            config = CreateConfig(tf32=False, profiles=[polygraphy_profile(spec)], load_timing_cache=str(timing_cache))
        out.append((spec, EngineBytesFromNetwork(network, config=config, save_timing_cache=str(timing_cache))))
    return out


def build_engines(plan: EnginePlan, out_dir: Path, timing_cache: Path | None = None) -> list[Path]:
    """Build and save every planned engine into ``out_dir``; all of them or none.

    Each engine is written to a temporary name and renamed; if any build fails, the engines
    this call already wrote are removed again and EngineError says which one failed and why.
    """
    ok, why = tensorrt_status()
    if not ok:
        raise EngineError(
            f"cannot build TensorRT engines here: {why}",
            hint=f"copy the output directory to a machine with TensorRT 10/11 and a GPU and run {BUILD_SCRIPT_NAME}",
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timing_cache = Path(timing_cache) if timing_cache else out_dir / TIMING_CACHE_NAME
    written: list[Path] = []
    try:
        for i, (spec, loader) in enumerate(polygraphy_loaders(plan, timing_cache), 1):
            log.info("building TensorRT engine %d/%d: %s (%s)", i, len(plan.engines), spec.engine_name, spec.description)
            try:
                serialized = loader()
            except Exception as exc:
                raise EngineError(
                    f"TensorRT could not build {spec.engine_name} ({spec.description}) from {spec.onnx_path.name}: "
                    f"{type(exc).__name__}: {exc}",
                    hint="run the matching command in build_engines.sh with --verbose to see TensorRT's log",
                ) from exc
            written.append(_write_atomically(out_dir / spec.engine_name, serialized))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written


def _write_atomically(dest: Path, data: Any) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=PARTIAL_SUFFIX, dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(memoryview(data) if not isinstance(data, (bytes, bytearray)) else data)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def trt_runner(engine: Path | str | Callable[[], Any], *, name: str | None = None,
               optimization_profile: int | None = None) -> Any:
    """A Polygraphy ``TrtRunner`` for an engine file, or a loader from :func:`polygraphy_loaders`.

    Lazy like everything else: TensorRT is imported when the runner is activated.
    """
    from polygraphy.backend.trt import EngineBytesFromNetwork, EngineFromBytes, EngineFromNetwork, EngineFromPath, TrtRunner

    if isinstance(engine, (str, Path)):
        loader: Any = EngineFromPath(str(engine))
    elif isinstance(engine, EngineBytesFromNetwork) and not isinstance(engine, EngineFromNetwork):
        loader = EngineFromBytes(engine)
    else:
        loader = engine
    return TrtRunner(loader, name=name, optimization_profile=optimization_profile)


# --------------------------------------------------------------------------- build script


def _trtexec_shapes(shapes: Sequence[tuple[str, tuple[int, ...]]]) -> str:
    return ",".join(f"{n}:{'x'.join(str(d) for d in s)}" for n, s in shapes)


def _polygraphy_shapes(shapes: Sequence[tuple[str, tuple[int, ...]]]) -> list[str]:
    return [f"{n}:[{','.join(str(d) for d in s)}]" for n, s in shapes]


def trtexec_argv(spec: EngineSpec, onnx: str, engine: str, timing_cache: str) -> list[str]:
    """trtexec arguments (without the program) that build ``spec`` into ``engine``.

    ``--noTF32``: trtexec turns TF32 on by default, which rounds fp32 matmuls/convs to 10-bit
    mantissas; the Polygraphy paths build with ``tf32=False``, and all three must give the same
    engine (TF32 is not a precision flag, so TensorRT 11 keeps it).
    """
    argv = [f"--onnx={onnx}", "--stronglyTyped", "--noTF32"]
    dyn = [p for p in spec.inputs if p.dynamic]
    if dyn:
        argv += [
            f"--minShapes={_trtexec_shapes([(p.name, p.min) for p in dyn])}",
            f"--optShapes={_trtexec_shapes([(p.name, p.opt) for p in dyn])}",
            f"--maxShapes={_trtexec_shapes([(p.name, p.max) for p in dyn])}",
        ]
    argv += [f"--timingCacheFile={timing_cache}", f"--saveEngine={engine}"]
    return argv


def polygraphy_argv(spec: EngineSpec, onnx: str, engine: str, timing_cache: str,
                    atol: float, rtol: float) -> list[str]:
    """``polygraphy run`` arguments that build ``spec`` and compare it with onnxruntime at opt."""
    argv = ["run", onnx, "--trt", "--onnxrt", "--strongly-typed"]
    dyn = [p for p in spec.inputs if p.dynamic]
    if dyn:
        argv += ["--trt-min-shapes", *_polygraphy_shapes([(p.name, p.min) for p in dyn])]
        argv += ["--trt-opt-shapes", *_polygraphy_shapes([(p.name, p.opt) for p in dyn])]
        argv += ["--trt-max-shapes", *_polygraphy_shapes([(p.name, p.max) for p in dyn])]
        argv += ["--input-shapes", *_polygraphy_shapes([(p.name, p.opt) for p in dyn])]
    argv += ["--load-timing-cache", timing_cache, "--save-timing-cache", timing_cache,
             "--atol", f"{atol:g}", "--rtol", f"{rtol:g}", "--save-engine", engine]
    return argv


def _join(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def write_build_script(
    plan: EnginePlan,
    out_dir: Path,
    *,
    atol: float = 1e-3,
    rtol: float = 1e-3,
) -> Path:
    """Write ``out_dir/build_engines.sh``, which builds every planned engine on a GPU machine.

    Each engine has a trtexec command (the default) and the equivalent ``polygraphy run``
    command (``FXTRT_BUILDER=polygraphy``), which also compares TensorRT with onnxruntime at
    the opt shapes within ``atol``/``rtol``. Paths are relative to the script, so ``out_dir``
    can be copied anywhere; engines are written under a temporary name and renamed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_names = sorted({_rel(e.onnx_path, out_dir) for e in plan.engines})
    width = max(len(e.engine_name) for e in plan.engines)
    lines = [
        "#!/usr/bin/env bash",
        _comment(f"Generated by fxtrt. Builds {len(plan.engines)} TensorRT engine(s) from {', '.join(onnx_names)}"),
        _comment(f"({_plan_summary(plan)}):"),
        *(_comment(f"  {e.engine_name:<{width}}  {e.description}") for e in plan.engines),
        "#",
        "# Precision comes from the ONNX types: the network is strongly typed and no precision flag is set.",
        "# Needs TensorRT 10 or 11 and a GPU. Paths are relative to this script's directory.",
        "#",
        "#   ./build_engines.sh                           build with trtexec (TRTEXEC=/path/to/trtexec if not on PATH)",
        "#   FXTRT_BUILDER=polygraphy ./build_engines.sh  build with polygraphy run, checking TensorRT against",
        f"#                                                onnxruntime at the opt shapes (atol={atol:g}, rtol={rtol:g})",
        "set -euo pipefail",
        'cd "$(dirname "${BASH_SOURCE[0]}")"',
        'BUILDER="${FXTRT_BUILDER:-trtexec}"',
        'TRTEXEC="${TRTEXEC:-trtexec}"',
        'case "${BUILDER}" in',
        "    trtexec|polygraphy) ;;",
        '    *) echo "FXTRT_BUILDER must be trtexec or polygraphy, not ${BUILDER}" >&2; exit 2 ;;',
        "esac",
        'TOOL="${TRTEXEC}"; [[ "${BUILDER}" == polygraphy ]] && TOOL=polygraphy',
        'if ! command -v "${TOOL}" >/dev/null 2>&1; then',
        '    echo "fxtrt: ${TOOL} not found; install TensorRT (or set TRTEXEC=/path/to/trtexec)" >&2',
        "    exit 127",
        "fi",
    ]
    for i, spec in enumerate(plan.engines, 1):
        onnx_rel = _rel(spec.onnx_path, out_dir)
        partial = spec.engine_name + PARTIAL_SUFFIX
        lines += [
            "",
            _comment(f"[{i}/{len(plan.engines)}] {spec.engine_name}: {spec.description}"),
            "echo " + shlex.quote(f"fxtrt: building {spec.engine_name} ({i}/{len(plan.engines)})") + " >&2",
            'if [[ "${BUILDER}" == trtexec ]]; then',
            '    "${TRTEXEC}" ' + _join(trtexec_argv(spec, onnx_rel, partial, TIMING_CACHE_NAME)),
            "else",
            "    polygraphy " + _join(polygraphy_argv(spec, onnx_rel, partial, TIMING_CACHE_NAME, atol, rtol)),
            "fi",
            "mv -f -- " + _join([partial, spec.engine_name]),
        ]
    lines += ["", 'echo "fxtrt: built ' + f'{len(plan.engines)} engine(s)" >&2', ""]

    dest = out_dir / BUILD_SCRIPT_NAME
    fd, tmp = tempfile.mkstemp(prefix=f".{BUILD_SCRIPT_NAME}.", dir=out_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(lines))
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def _comment(text: str) -> str:
    """A one-line shell comment, whatever the file names in it contain."""
    return "# " + "".join(c if c.isprintable() else "?" for c in text)


def _rel(path: Path, out_dir: Path) -> str:
    rel = os.path.relpath(Path(path).resolve(), out_dir.resolve())
    if rel.startswith(".."):
        log.warning("%s is outside %s: the build script refers to it as %s, so copy it along", path, out_dir, rel)
    return Path(rel).as_posix()


def _plan_summary(plan: EnginePlan) -> str:
    if plan.kind == "buckets":
        d, values = plan.split[0]
        return f"static-batch buckets, {d} in {list(values)}"
    if plan.kind == "split":
        kept = f"{plan.keep_dynamic} dynamic, " if plan.keep_dynamic else ""
        return kept + ", ".join(f"{d} discretised to {list(v)}" for d, v in plan.split)
    return f"{plan.keep_dynamic} dynamic" if plan.keep_dynamic else "static shapes"


def parse_build_script(path: Path) -> list[BuildCommand]:
    """Read the build commands back out of a script written by :func:`write_build_script`."""
    renames: dict[str, str] = {}
    raw: list[tuple[str, list[str]]] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if text.startswith('"${TRTEXEC}" '):
            raw.append(("trtexec", shlex.split(text)[1:]))
        elif text.startswith("polygraphy "):
            raw.append(("polygraphy", shlex.split(text)[1:]))
        elif text.startswith("mv -f -- "):
            _, _, _, src, dst = shlex.split(text)
            renames[src] = dst
    return [_parse_trtexec(argv, renames) if tool == "trtexec" else _parse_polygraphy(argv, renames)
            for tool, argv in raw]


def _shape(text: str) -> tuple[int, ...]:
    text = text.strip("[]")
    if not text:
        return ()
    return tuple(int(d) for d in re.split(r"[x,]", text))


def _parse_trtexec(argv: list[str], renames: Mapping[str, str]) -> BuildCommand:
    opts = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    shapes = {}
    for key in ("minShapes", "optShapes", "maxShapes"):
        shapes[key] = {n: _shape(s) for n, s in (item.rsplit(":", 1) for item in opts[key].split(","))} if key in opts else {}
    engine = opts["saveEngine"]
    return BuildCommand("trtexec", opts["onnx"], renames.get(engine, engine),
                        shapes["minShapes"], shapes["optShapes"], shapes["maxShapes"], tuple(argv))


def _parse_polygraphy(argv: list[str], renames: Mapping[str, str]) -> BuildCommand:
    groups: dict[str, list[str]] = {}
    key = None
    for a in argv[2:]:
        if a.startswith("--"):
            key = a[2:]
            groups.setdefault(key, [])
        elif key is not None:
            groups[key].append(a)

    def shapes(k: str) -> dict[str, tuple[int, ...]]:
        return {n: _shape(s) for n, s in (item.rsplit(":", 1) for item in groups.get(k, []))}

    engine = groups["save-engine"][0]
    return BuildCommand("polygraphy", argv[1], renames.get(engine, engine),
                        shapes("trt-min-shapes"), shapes("trt-opt-shapes"), shapes("trt-max-shapes"), tuple(argv))
