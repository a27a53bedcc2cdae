"""Running TensorRT engines: one engine through Polygraphy's ``TrtRunner``, or a set of them the
way a serving process with several engines does.

Lazy like the loaders: TensorRT is imported when a runner is activated, never before.

Example::

    with trt_runner(Path("out/model.engine")) as runner:       # needs TensorRT and a GPU
        runner.infer(feed)
    engine_for_shapes(plan.engines, {"x": (4, 3, 224, 224)})   # 0: the engine that takes them
"""
from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from fxtrt.backend.tensorrt.specs import EngineSpec
from fxtrt.errors import ConfigError


def trt_runner(engine: Path | str | Callable[[], Any], *, name: str | None = None,
               optimization_profile: int | None = None) -> Any:
    """A Polygraphy ``TrtRunner`` for an engine file, or a loader from :func:`polygraphy_loaders`.

    Lazy like everything else: TensorRT is imported when the runner is activated.
    """
    from polygraphy.backend.trt import TrtRunner

    return TrtRunner(engine_loader(engine), name=name, optimization_profile=optimization_profile)


def engine_loader(engine: Path | str | Callable[[], Any]) -> Any:
    """The lazy loader a :func:`trt_runner` deserialises its engine with: from an engine file,
    from a loader of serialized bytes, or the given engine loader itself."""
    from polygraphy.backend.trt import EngineBytesFromNetwork, EngineFromBytes, EngineFromNetwork, EngineFromPath

    if isinstance(engine, (str, Path)):
        return EngineFromPath(str(engine))
    if isinstance(engine, EngineBytesFromNetwork) and not isinstance(engine, EngineFromNetwork):
        return EngineFromBytes(engine)
    return engine


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
