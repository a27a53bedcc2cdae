"""What the benchmark needs to know about one corpus model: how to build it, feed it, and which sizes to judge.

A model is judged at a set of ``Case``s: a batch size and, for a model with
dynamic dims besides the batch (the ``dyn`` family), one size per such dim.
A batch-only model's cases are just its batch sizes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from benchmarks.inputs import InputFactory


@dataclass(frozen=True)
class DynamicDim:
    """A dynamic size besides the batch, such as an image side or a sequence length.

    Every (input, dim) given the same ``DynamicDim`` carries one symbol: an
    image's H and W with one ``size`` stay equal, as ``input_ids`` and
    ``attention_mask`` share ``seq``.  ``step`` says the model only accepts
    multiples of it (YOLO's stride 32).  The export example is at ``opt``.
    """

    name: str
    min: int
    opt: int
    max: int
    step: int | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name == "batch":
            raise ValueError(f"dynamic dim name {self.name!r} must be an identifier other than 'batch'")
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"dim {self.name}: need 1 <= min <= opt <= max, got {self.range}")
        if self.step is not None and any(v % self.step for v in (self.min, self.opt, self.max)):
            raise ValueError(f"dim {self.name}: min, opt and max must be multiples of step {self.step}")

    @property
    def range(self) -> tuple[int, ...]:
        """``(min, opt, max)`` or ``(min, opt, max, step)``: fxtrt's ``dynamic=`` value for this dim."""
        return (self.min, self.opt, self.max) + ((self.step,) if self.step else ())

    def allows(self, size: int) -> bool:
        return self.min <= size <= self.max and (self.step is None or size % self.step == 0)


@dataclass(frozen=True)
class Case:
    """One judged input shape: a batch size and a size for each dynamic dim (by name, in the spec's order)."""

    batch: int
    sizes: tuple[tuple[str, int], ...] = ()

    @property
    def key(self) -> str:
        """``"3"`` for a batch-only model, ``"3,size=96"`` otherwise; names arrays and per-case results."""
        return ",".join([str(self.batch), *(f"{n}={v}" for n, v in self.sizes)])


def case_text(key: str) -> str:
    """``"3,size=96"`` -> ``"batch 3, size=96"``, for details and progress."""
    return "batch " + key.replace(",", ", ")


@dataclass(frozen=True)
class ModelSpec:
    """One corpus entry.

    ``build`` returns the module ready to export (eval mode is set by the
    harness); its ``forward`` takes the tensors ``make_inputs`` returns, in
    order, and returns a tensor or a tuple of tensors.  ``build`` imports its
    library lazily so that listing the corpus stays cheap.

    Dynamic dims besides the batch: ``dynamic`` maps an input index to
    ``{dim: DynamicDim}``, and ``judge_sizes`` gives the sizes each dim is
    judged at (by name; default its min and max).  ``batch_range`` and
    ``judge_batches`` replace the run's batch profile (1, 8, 32) and batch
    sizes (1, 3, 8, 32) for this model, to keep larger shapes affordable.
    The judged cases are every combination of a batch size and dim sizes.
    """

    name: str
    build: Callable[[], torch.nn.Module]
    make_inputs: InputFactory
    input_names: tuple[str, ...] = ("x",)
    batch_dims: tuple[int | None, ...] = (0,)
    quick: bool = False
    note: str = ""
    dynamic: Mapping[int, Mapping[int, DynamicDim]] = field(default_factory=dict, hash=False)
    judge_sizes: Mapping[str, tuple[int, ...]] = field(default_factory=dict, hash=False)
    batch_range: tuple[int, int, int] | None = None
    judge_batches: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if "/" not in self.name:
            raise ValueError(f"ModelSpec name {self.name!r} must be 'family/model'")
        if len(self.input_names) != len(self.batch_dims):
            raise ValueError(
                f"{self.name}: {len(self.input_names)} input_names but "
                f"{len(self.batch_dims)} batch_dims"
            )
        self._check_dynamic()

    def _check_dynamic(self) -> None:
        by_name: dict[str, DynamicDim] = {}
        for i, per_dim in self.dynamic.items():
            if not 0 <= i < len(self.input_names):
                raise ValueError(f"{self.name}: dynamic input index {i} out of range")
            for d, dim in per_dim.items():
                if d == self.batch_dims[i]:
                    raise ValueError(f"{self.name}: input {i} dim {d} is the batch dim, not a dynamic dim")
                if by_name.setdefault(dim.name, dim) != dim:
                    raise ValueError(f"{self.name}: two different dims are named {dim.name!r}")
        unknown = set(self.judge_sizes) - set(by_name)
        if unknown:
            raise ValueError(f"{self.name}: judge_sizes for unknown dims {sorted(unknown)}")
        for dim in by_name.values():
            bad = [s for s in self.sizes_of(dim) if not dim.allows(s)]
            if bad:
                raise ValueError(f"{self.name}: judge sizes {bad} are outside dim {dim.name}'s range {dim.range}")
        if self.judge_batches is not None and 1 not in self.judge_batches:
            raise ValueError(f"{self.name}: judge_batches must include 1, the export example's batch size")
        if self.batch_range is not None and self.judge_batches is not None:
            lo, _, hi = self.batch_range
            if not all(lo <= b <= hi for b in self.judge_batches):
                raise ValueError(f"{self.name}: judge_batches {self.judge_batches} outside batch_range {self.batch_range}")

    @property
    def family(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def dims(self) -> tuple[DynamicDim, ...]:
        """The dynamic dims besides the batch, each once, in input then dim order."""
        found = {dim.name: dim for _, per_dim in sorted(self.dynamic.items()) for _, dim in sorted(per_dim.items())}
        return tuple(found.values())

    def sizes_of(self, dim: DynamicDim) -> tuple[int, ...]:
        return self.judge_sizes.get(dim.name) or tuple(sorted({dim.min, dim.max}))

    @property
    def has_own_shapes(self) -> bool:
        """Whether this model is judged at shapes other than the run's batch sizes."""
        return bool(self.dims) or self.judge_batches is not None or self.batch_range is not None

    def shapes_text(self, batches: tuple[int, ...], batch_range: tuple[int, int, int]) -> str:
        """``batch 1,3,8 of 1..8; size 64,100,128 of 64..128 (example 96)``: what is exported and judged."""
        lo, _, hi = self.batch_range or batch_range
        parts = [f"batch {','.join(map(str, self.judge_batches or batches))} of {lo}..{hi}"]
        for d in self.dims:
            grid = f" step {d.step}" if d.step else ""
            parts.append(f"{d.name} {','.join(map(str, self.sizes_of(d)))} of {d.min}..{d.max}{grid} (example {d.opt})")
        return "; ".join(parts)

    @property
    def example_case(self) -> Case:
        """The export example: batch 1, every dynamic dim at its ``opt``."""
        return Case(1, tuple((d.name, d.opt) for d in self.dims))

    def cases(self, batches: tuple[int, ...]) -> tuple[Case, ...]:
        """Every judged case: ``judge_batches`` (else ``batches``) times every combination of dim sizes."""
        names = [d.name for d in self.dims]
        combos = itertools.product(*(self.sizes_of(d) for d in self.dims))
        return tuple(
            Case(b, tuple(zip(names, sizes)))
            for sizes in combos
            for b in (self.judge_batches or batches)
        )
