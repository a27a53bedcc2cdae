"""Build a plan's engines with Polygraphy's lazy loaders, which compose: the serialized engine
from the network from the ONNX path, nothing done until the outermost one is called.

Nothing here imports ``tensorrt`` until an engine is actually built, and :func:`tensorrt_status`
is the only place that tries the import on purpose. Running the engines is :mod:`.runner`.

Example::

    ok, why = tensorrt_status()
    if ok:
        paths = build_engines(plan, Path("out"))   # needs TensorRT and a GPU
"""
from __future__ import annotations

import importlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fxtrt.backend.tensorrt.specs import BUILD_SCRIPT_NAME, PARTIAL_SUFFIX, TIMING_CACHE_NAME, EnginePlan, EngineSpec
from fxtrt.errors import EngineError

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class EngineLoaders:
    """The composed Polygraphy loaders of one planned engine, each kept by name (Polygraphy keeps
    them only privately inside the outer loader): the network parsed from the ONNX file, the
    builder config with the engine's profile, and the loader that builds the serialized engine."""

    spec: EngineSpec
    network: Any  # NetworkFromOnnxPath
    config: Any  # CreateConfig
    engine: Callable[[], Any]  # EngineBytesFromNetwork(network, config)


def engine_loaders(plan: EnginePlan, timing_cache: Path) -> list[EngineLoaders]:
    """Per engine, lazy Polygraphy loaders that return the *serialized* engine when called.

    ``NetworkFromOnnxPath(strongly_typed=True)`` -> ``EngineBytesFromNetwork(config=CreateConfig(
    profiles=[...], load_timing_cache=...), save_timing_cache=...)``. Bytes rather than
    ``EngineFromNetwork``: the bytes are what gets saved, and deserialising only to serialise
    again costs time and GPU memory; :func:`trt_runner` turns them into a runnable engine.
    Building nothing and importing no TensorRT until called.
    """
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath
    from polygraphy.logger import G_LOGGER

    out: list[EngineLoaders] = []
    for spec in plan.engines:
        network = NetworkFromOnnxPath(str(spec.onnx_path), strongly_typed=True)
        # tf32=False: fp32 layers compute in fp32, as eager PyTorch does by default on CPU.
        # (CreateConfig logs an info line about TF32 per instance; that is noise here.)
        with G_LOGGER.verbosity(G_LOGGER.WARNING):
            config = CreateConfig(tf32=False, profiles=[polygraphy_profile(spec)], load_timing_cache=str(timing_cache))
        engine = EngineBytesFromNetwork(network, config=config, save_timing_cache=str(timing_cache))
        out.append(EngineLoaders(spec, network, config, engine))
    return out


def polygraphy_loaders(plan: EnginePlan, timing_cache: Path) -> list[tuple[EngineSpec, Callable[[], Any]]]:
    """(engine spec, the loader that builds its serialized engine), per planned engine."""
    return [(e.spec, e.engine) for e in engine_loaders(plan, timing_cache)]


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
