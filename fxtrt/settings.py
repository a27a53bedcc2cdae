"""compile()'s arguments, validated once into one frozen object that every stage reads.

Bad values fail here, before any work, with the argument's name in the message.
"""
from __future__ import annotations

import inspect
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from fxtrt.errors import ConfigError

TARGETS = ("onnx", "tensorrt")
PRECISIONS = ("fp32", "fp16")
BATCH_NAME = "batch"


class _DefaultBatch(tuple):
    """compile()'s default batch range, told apart (``is``) from the same sizes passed explicitly:
    with ``buckets``, a ``batch`` the caller passed would be ignored, so it is an error."""


DEFAULT_BATCH: tuple[int, int, int] = _DefaultBatch((1, 8, 32))  # type: ignore[assignment]


@dataclass(frozen=True)
class DynamicDim:
    """One symbolic size: its ONNX name, its range, and every (input, dim) that carries it."""

    name: str
    min: int
    opt: int
    max: int
    sites: tuple[tuple[int, int], ...]
    example: int
    step: int | None = None

    @property
    def is_batch(self) -> bool:
        return self.name == BATCH_NAME

    @property
    def grid(self) -> int:
        """Sizes fxtrt traces and checks are multiples of this: the step the user gave, else
        gcd(min, opt, max), so that a model that needs multiples of 32 is never run at 129."""
        return self.step or math.gcd(self.min, self.opt, self.max)

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "min": self.min, "opt": self.opt, "max": self.max,
               "sites": [list(s) for s in self.sites], "example": self.example}
        if self.step:
            out["step"] = self.step
        return out


@dataclass(frozen=True)
class Settings:
    """Everything a compile run needs to know, fixed before the run starts."""

    dims: tuple[DynamicDim, ...]
    input_names: tuple[str, ...]
    opset: int = 17
    target: str = "onnx"
    precision: str = "fp32"
    passes: tuple[str | Callable, ...] | None = None
    verify: bool = True
    atol: float = 1e-4
    rtol: float = 1e-3
    out_dir: Path | None = None
    debug_dir: Path | None = None
    trace_divergence: bool = False
    buckets: tuple[int, ...] | None = None
    keep_dynamic: str = BATCH_NAME
    fp16_atol: float = 1e-2
    fp16_rtol: float = 1e-2
    strict: bool = False  # target="tensorrt": a node TensorRT's ONNX parser would not take is an EngineError
    external_data_threshold: int = 2 * 1024**3 - 64 * 1024**2

    @property
    def batch(self) -> DynamicDim | None:
        return next((d for d in self.dims if d.is_batch), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dims": [d.to_dict() for d in self.dims],
            "input_names": list(self.input_names),
            "opset": self.opset, "target": self.target, "precision": self.precision,
            "passes": None if self.passes is None else [p if isinstance(p, str) else getattr(p, "__name__", repr(p)) for p in self.passes],
            "verify": self.verify, "atol": self.atol, "rtol": self.rtol,
            "out_dir": str(self.out_dir) if self.out_dir else None,
            "debug_dir": str(self.debug_dir) if self.debug_dir else None,
            "trace_divergence": self.trace_divergence,
            "buckets": list(self.buckets) if self.buckets is not None else None,
            "keep_dynamic": self.keep_dynamic, "fp16_atol": self.fp16_atol, "fp16_rtol": self.fp16_rtol,
            "strict": self.strict,
        }


def normalize_inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    """A tensor or a tuple/list of tensors, as a tuple."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(
        isinstance(t, torch.Tensor) for t in example_inputs
    ):
        return tuple(example_inputs)
    raise ConfigError(
        f"example_inputs must be a torch.Tensor or a non-empty tuple of tensors, got {_describe(example_inputs)}",
        hint="pass e.g. torch.randn(1, 3, 224, 224) or (ids, mask)",
    )


def _describe(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of ({', '.join(type(v).__name__ for v in value)})"
    return type(value).__name__


def input_names_of(model: torch.nn.Module, n: int) -> tuple[str, ...]:
    """Names of forward's positional parameters, so ONNX inputs read like the model's code."""
    try:
        params = [
            p for p in inspect.signature(model.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params[:n]]
    if len(names) < n or len(set(names)) < n:
        names = [f"input_{i}" for i in range(n)]
    return tuple(names)


def _range(arg: str, value: Any) -> tuple[int, int, int]:
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ConfigError(f"{arg} must be a (min, opt, max) tuple of ints, got {value!r}")
    lo, opt, hi = value
    if lo < 1:
        raise ConfigError(f"{arg}: min must be >= 1, got {lo}")
    if not lo <= opt <= hi:
        raise ConfigError(f"{arg}: need min <= opt <= max, got {tuple(value)}",
                          hint="e.g. (1, 8, 32)")
    return lo, opt, hi


def _dynamic_spec(arg: str, spec: Any) -> tuple[str | None, tuple[int, int, int], int | None]:
    """``(min, opt, max)``, ``(min, opt, max, step)``, and either with a name in front."""
    name = None
    if isinstance(spec, (tuple, list)) and spec and isinstance(spec[0], str):
        name, spec = spec[0], tuple(spec[1:])
        if not name.isidentifier():
            raise ConfigError(f"{arg}: dim name {name!r} must be an identifier, e.g. 'seq' or 'height'")
    step = None
    if isinstance(spec, (tuple, list)) and len(spec) == 4:
        spec, step = tuple(spec[:3]), spec[3]
        if not isinstance(step, int) or isinstance(step, bool) or step < 1:
            raise ConfigError(f"{arg}: step must be a positive int, got {step!r}")
    rng = _range(arg, spec)
    if step is not None:
        off = [v for v in rng if v % step]
        if off:
            raise ConfigError(f"{arg}: min, opt and max must be multiples of the step {step}, got {rng}",
                              hint=f"e.g. {tuple(max(step, v // step * step) for v in rng) + (step,)}")
        step = step if step > 1 else None
    return name, rng, step


def _check_dim(arg: str, inputs: Sequence[torch.Tensor], i: int, d: int) -> None:
    if not 0 <= i < len(inputs):
        raise ConfigError(f"{arg}: input index {i} out of range; the model has {len(inputs)} input(s)")
    rank = inputs[i].dim()
    if not 0 <= d < rank:
        raise ConfigError(
            f"{arg}: dim {d} is out of range for input {i} of shape {tuple(inputs[i].shape)} (rank {rank})",
            hint=f"use a dim in 0..{rank - 1}, or None for an input without a batch",
        )


def default_dim_name(input_names: Sequence[str], i: int, axis: int) -> str:
    """The name of an unnamed dynamic dim: its input and axis (``x_dim2``, ``input_ids_dim1``)."""
    return f"{input_names[i]}_dim{axis}" if i < len(input_names) else f"input_{i}_dim{axis}"


def make_dims(
    inputs: Sequence[torch.Tensor],
    batch: Any,
    batch_dims: Any,
    dynamic: Any,
    input_names: Sequence[str] | None = None,
) -> tuple[DynamicDim, ...]:
    """Validate batch / batch_dims / dynamic into named dims; batch first. Unnamed dims are
    independent and named after their input and axis."""
    names = tuple(input_names) if input_names is not None else tuple(f"input_{i}" for i in range(len(inputs)))
    dims: list[DynamicDim] = []
    if batch is not None:
        dims.append(_batch_dim(inputs, batch, batch_dims))
    elif batch_dims is not None:
        raise ConfigError("batch_dims was given but batch=None (static model)",
                          hint="pass batch=(min, opt, max) to make the batch dynamic")
    if dynamic:
        dims.extend(_declared_dims(inputs, dynamic, {s for d in dims for s in d.sites}, names))
    return tuple(dims)


def _batch_dim(inputs: Sequence[torch.Tensor], batch: Any, batch_dims: Any) -> DynamicDim:
    """The batch: one size at every input site ``batch_dims`` marks (dim 0 of each by default)."""
    lo, opt, hi = _range("batch", batch)
    if batch_dims is None:
        batch_dims = (0,) * len(inputs)
    if isinstance(batch_dims, int) and not isinstance(batch_dims, bool):
        batch_dims = (batch_dims,) * len(inputs)
    if not isinstance(batch_dims, (tuple, list)) or len(batch_dims) != len(inputs):
        raise ConfigError(
            f"batch_dims must give one entry (int or None) per input: {len(inputs)} expected, got {batch_dims!r}"
        )
    sites = []
    for i, d in enumerate(batch_dims):
        if d is None:
            continue
        if not isinstance(d, int) or isinstance(d, bool):
            raise ConfigError(f"batch_dims[{i}] must be an int or None, got {d!r}")
        _check_dim("batch_dims", inputs, i, d if d >= 0 else d + inputs[i].dim())
        sites.append((i, d % inputs[i].dim()))
    if not sites:
        raise ConfigError("batch_dims marks no input as carrying the batch",
                          hint="give at least one input a batch dim, or pass batch=None for a static model")
    sizes = {int(inputs[i].shape[d]) for i, d in sites}
    if len(sizes) != 1:
        raise ConfigError(f"the inputs disagree on the example batch size: {sorted(sizes)} at batch_dims {batch_dims!r}")
    return DynamicDim("batch", lo, opt, hi, tuple(sites), sizes.pop())


def _declared_dims(inputs: Sequence[torch.Tensor], dynamic: Any, taken: set[tuple[int, int]],
                   names: Sequence[str]) -> list[DynamicDim]:
    """The dims of ``dynamic``: sites that share a name are one dim, every other site its own."""
    if not isinstance(dynamic, Mapping):
        raise ConfigError(f"dynamic must be a mapping {{input: {{dim: (min, opt, max)}}}}, got {dynamic!r}")
    groups: dict[Any, dict[str, Any]] = {}
    for i, per_dim in sorted(dynamic.items()):
        if not isinstance(i, int) or not isinstance(per_dim, Mapping):
            raise ConfigError(f"dynamic must map an input index to {{dim: (min, opt, max)}}, got {i!r}: {per_dim!r}")
        for d, spec in sorted(per_dim.items()):
            _check_dim("dynamic", inputs, i, d)
            if (i, d) in taken:
                raise ConfigError(f"dynamic: input {i} dim {d} is already the batch dim")
            name, rng, step = _dynamic_spec(f"dynamic[{i}][{d}]", spec)
            size = int(inputs[i].shape[d])
            # Dims are independent unless they share a name (torch.onnx's convention: separate
            # Dims are independent); capture merges dims torch.export proves equal.
            g = groups.setdefault(name or (i, d), {"name": name, "range": rng, "step": step, "sites": [], "size": size})
            if g["range"] != rng or g["step"] != step or g["size"] != size:
                raise ConfigError(f"dynamic dim {name!r} is given different ranges, steps or example sizes: "
                                  f"{g['range']} step {g['step']} size {g['size']} at input {g['sites'][0][0]} "
                                  f"dim {g['sites'][0][1]}, {rng} step {step} size {size} at input {i} dim {d}",
                                  hint="one name is one size: give the dims the same range, or different names")
            g["sites"].append((i, d))
    used, dims = {"batch"}, []
    for g in groups.values():
        name = g["name"] or default_dim_name(names, *g["sites"][0])
        if name in used:
            raise ConfigError(f"dynamic dim name {name!r} is used twice")
        used.add(name)
        lo, opt, hi = g["range"]
        dims.append(DynamicDim(name, lo, opt, hi, tuple(g["sites"]), g["size"], g["step"]))
    return dims


def merge_dims(dims: Sequence[DynamicDim], a: str, b: str, input_names: Sequence[str]) -> tuple[DynamicDim, ...]:
    """``dims`` with ``a`` and ``b`` one symbol (torch.export proved them equal). The batch, else a
    name the user gave, names it; their declarations must agree, or serving one size under two
    independent claims would be a lie (ConfigError)."""
    first, second = [d for d in dims if d.name in (a, b)]  # in declaration order

    def default(d: DynamicDim) -> bool:
        return d.name == default_dim_name(input_names, *d.sites[0])

    keep, drop = (second, first) if second.is_batch or (default(first) and not default(second)) else (first, second)
    if (keep.min, keep.max, keep.step) != (drop.min, drop.max, drop.step) or keep.example != drop.example:
        raise ConfigError(
            f"the model needs dims '{a}' and '{b}' to be one size, but they are declared independently with "
            f"different ranges ({drop.min}..{drop.max} and {keep.min}..{keep.max}) or example sizes",
            hint=f"declare them with one name and one range, e.g. ('{keep.name}', min, opt, max) on both")
    merged = DynamicDim(keep.name, keep.min, keep.opt, keep.max, keep.sites + drop.sites, keep.example, keep.step)
    return tuple(merged if d is keep else d for d in dims if d is not drop)


def check_out_dir(out_dir: Any, arg: str = "out_dir") -> Path | None:
    """Fail now, not after a long compile, if artifacts could not be written."""
    if out_dir is None:
        return None
    if not isinstance(out_dir, (str, os.PathLike)):
        raise ConfigError(f"{arg} must be a path, got {type(out_dir).__name__}")
    path = Path(out_dir).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{arg} {path} exists and is not a directory")
    parent = path if path.exists() else next((p for p in path.parents if p.exists()), None)
    if parent is None or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{arg} {path} is not writable", hint="choose a directory you can write to")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise ConfigError(f"{arg} {path} is not writable: {exc}") from None
    return path


def make_settings(
    model: Any, inputs: tuple[torch.Tensor, ...], *, batch: Any, batch_dims: Any, dynamic: Any, out_dir: Any,
    opset: Any, target: Any, precision: Any, passes: Any, verify: Any, atol: Any, rtol: Any,
    debug_dir: Any = None, trace_divergence: Any = Settings.trace_divergence, buckets: Any = None,
    keep_dynamic: Any = Settings.keep_dynamic, fp16_atol: Any = Settings.fp16_atol,
    fp16_rtol: Any = Settings.fp16_rtol, strict: Any = Settings.strict,
    targets: Sequence[str] = TARGETS, precisions: Sequence[str] = PRECISIONS, input_names: Sequence[str] | None = None,
) -> Settings:
    """compile()'s arguments checked and frozen (``model`` is an ``nn.Module``: :func:`fxtrt.frontend.bind.bind`
    checked it)."""
    if not isinstance(opset, int) or isinstance(opset, bool) or not 11 <= opset <= 23:
        raise ConfigError(f"opset must be an int in 11..23, got {opset!r}", hint="17 is the recommended default")
    if target not in targets:
        raise ConfigError(f"target={target!r} is not supported; choose one of {list(targets)}")
    if precision not in precisions:
        raise ConfigError(f"precision={precision!r} is not supported; choose one of {list(precisions)}")
    for name, tol in (("atol", atol), ("rtol", rtol), ("fp16_atol", fp16_atol), ("fp16_rtol", fp16_rtol)):
        if not isinstance(tol, (int, float)) or isinstance(tol, bool) or tol < 0:
            raise ConfigError(f"{name} must be a non-negative number, got {tol!r}")
    if passes is not None:
        if isinstance(passes, (str, bytes)) or not isinstance(passes, Sequence):
            raise ConfigError(f"passes must be a list of pass names or callables, got {passes!r}")
        for p in passes:
            if not (isinstance(p, str) or callable(p)):
                raise ConfigError(f"passes: {p!r} is neither a registered pass name nor a callable")
        passes = tuple(passes)
    if not isinstance(strict, bool):
        raise ConfigError(f"strict must be True or False, got {strict!r}")
    buckets = _check_buckets(buckets, batch)
    if buckets is not None:
        batch = (buckets[0], buckets[len(buckets) // 2], buckets[-1])
    input_names = tuple(input_names) if input_names is not None else input_names_of(model, len(inputs))
    dims = make_dims(inputs, batch, batch_dims, dynamic, input_names)
    _check_keep_dynamic(keep_dynamic, dims, target, buckets)
    return Settings(
        dims=dims,
        input_names=input_names,
        opset=opset, target=target, precision=precision, passes=passes,
        verify=bool(verify), atol=float(atol), rtol=float(rtol),
        out_dir=check_out_dir(out_dir),
        debug_dir=check_out_dir(debug_dir, "debug_dir"), trace_divergence=bool(trace_divergence),
        buckets=buckets, keep_dynamic=keep_dynamic, fp16_atol=float(fp16_atol), fp16_rtol=float(fp16_rtol),
        strict=strict,
    )


def _check_buckets(buckets: Any, batch: Any) -> tuple[int, ...] | None:
    """``buckets``: sorted, unique, positive ints. They replace ``batch``: the batch range becomes
    min(buckets)..max(buckets), and a ``batch`` the caller passed (other than None), even (1, 8, 32),
    is an error, since it would be ignored."""
    if buckets is None:
        return None
    if (isinstance(buckets, (str, bytes)) or not isinstance(buckets, Sequence) or not buckets
            or not all(isinstance(b, int) and not isinstance(b, bool) for b in buckets)):
        raise ConfigError(f"buckets must be a non-empty sequence of ints, got {buckets!r}", hint="e.g. buckets=(1, 4, 8, 16)")
    if any(b < 1 for b in buckets):
        raise ConfigError(f"buckets must be positive batch sizes, got {tuple(buckets)}")
    if list(buckets) != sorted(set(buckets)):
        raise ConfigError(f"buckets must be sorted and unique, got {tuple(buckets)}",
                          hint=f"e.g. buckets={tuple(sorted(set(buckets)))}")
    if batch is not None and batch is not DEFAULT_BATCH:
        raise ConfigError(
            f"pass either batch or buckets, not both: buckets={tuple(buckets)} serve batches of any size, "
            f"so batch={batch!r} would be ignored",
            hint="drop batch=..., or drop buckets=... for one dynamic-batch model",
        )
    return tuple(buckets)


def _check_keep_dynamic(keep_dynamic: Any, dims: Sequence[DynamicDim], target: Any, buckets: Any) -> None:
    """With target="tensorrt" and more than one dynamic dim, the dim that stays dynamic in the
    engines (the others are discretised); a bucket set keeps every non-batch dim dynamic."""
    if not isinstance(keep_dynamic, str) or not keep_dynamic:
        raise ConfigError(f"keep_dynamic must be the name of a dynamic dim, got {keep_dynamic!r}")
    names = [d.name for d in dims]
    if keep_dynamic != BATCH_NAME and keep_dynamic not in names:
        raise ConfigError(f"keep_dynamic={keep_dynamic!r} is not a dynamic dim; the dynamic dims are {names}",
                          hint="name dims with dynamic={input: {dim: (name, min, opt, max)}}")
    if target == "tensorrt" and buckets is None and len(dims) > 1 and keep_dynamic not in names:
        raise ConfigError(
            f"keep_dynamic={keep_dynamic!r} is not a dynamic dim; with target='tensorrt' and dims {names}, "
            "name the one that stays dynamic in the engines (the others get one engine per size)",
            hint=f"e.g. keep_dynamic={names[0]!r}",
        )
