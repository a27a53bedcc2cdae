"""The checks a plan passes before anything reaches a GPU machine.

A profile for an input the ONNX model doesn't have, a dim name trtexec can't parse or two
engines written to one file would fail only where the engines are built; here they fail at once,
with the argument or the file that is wrong.

Example::

    check_specs([TensorSpec("image:0", ("batch", 3, 32, 32), "float32")])   # ConfigError: can't be written
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from fxtrt.backend.graph_inputs import graph_inputs
from fxtrt.backend.tensorrt.specs import EngineSpec, TensorSpec
from fxtrt.errors import ConfigError

# Characters that trtexec's ``name:AxB,...`` and Polygraphy's ``name:[A,B]`` syntax can't carry.
_BAD_NAME = re.compile(r"[\s:,\[\]'\"=]")


def check_ranges(ranges: Mapping[str, tuple[int, int, int]], needed: Sequence[str]) -> None:
    """Every dim in ``needed`` has a (min, opt, max) range with 1 <= min <= opt <= max."""
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


def check_specs(inputs: Sequence[TensorSpec]) -> None:
    """Input names and dims that trtexec and Polygraphy shape flags can carry."""
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


def check_against_onnx(onnx_path: Path, specs: Sequence[TensorSpec]) -> None:
    """Profiles for inputs the ONNX doesn't have fail only on the GPU machine; fail here instead."""
    actual = {gi.name: (gi.dtype_name, gi.dims) for gi in graph_inputs(onnx_path)}
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


def check_unique(engines: Sequence[EngineSpec]) -> None:
    """No two engines are written to the same file."""
    names = [e.engine_name for e in engines]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"two engines would be written to the same file: {dup}",
                          hint="give each bucket's ONNX a distinct file name")
