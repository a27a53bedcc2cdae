"""What capture hands on: each trace, how every dynamic dim was captured, the output structure.

Records only (no torch.export here), so passes, backends and artifacts can read a capture without
importing the capture machinery.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.fx
import torch.utils._pytree as pytree

from fxtrt.frontend.guards import Hole
from fxtrt.settings import DynamicDim

SYMBOLIC = "symbolic from capture"
TRACE_DIFF = "generalised by trace diff"


@dataclass(frozen=True)
class DimCapture:
    """How one dynamic dim was captured, and the range torch.export traced it over."""

    name: str
    how: str
    low: int
    high: int
    why: str = ""
    sizes: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"how": self.how, "traced_range": [self.low, self.high]}
        if self.why:
            out["why"] = self.why
        if self.sizes:
            out["trace_sizes"] = list(self.sizes)
        return out


@dataclass
class Capture:
    """One trace of the model: symbolic in some dims, at the concrete ``sizes`` in the others."""

    sizes: dict[str, int]
    gm: torch.fx.GraphModule
    inputs: tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class Program:
    """What emission needs from the symbolic export to turn the graph back into an
    ExportedProgram without tracing it again."""

    range_constraints: dict[Any, Any]
    verifiers: list[Any]


@dataclass
class CapturedGraph:
    """What the frontend learned: the traces, how each dim was captured, the output structure."""

    captures: list[Capture]
    out_spec: pytree.TreeSpec
    example: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dims: dict[str, DimCapture] = field(default_factory=dict)
    checks: list[Capture] = field(default_factory=list)
    program: Program | None = None
    notes: list[str] = field(default_factory=list)
    exports: int = 1
    holes: tuple[Hole, ...] = ()  # facts torch assumed that fail inside the ranges (verified there)
    pristine: torch.fx.GraphModule | None = None  # the base trace before the passes ran (for diagnosis)
    declared: tuple[DynamicDim, ...] = ()  # the dims as captured: the settings' dims, with dims torch proves equal merged

    @property
    def base(self) -> Capture:
        return self.captures[0]

    @property
    def baked(self) -> list[str]:
        """Dims the symbolic capture could not keep: the ones trace diffing generalises."""
        return [n for n, d in self.dims.items() if d.how == TRACE_DIFF]

    @property
    def symbolic(self) -> bool:
        """Every dynamic dim is symbolic in the base trace: it can be emitted as captured."""
        return not self.baked

    def traced_low(self) -> dict[str, int]:
        return {n: d.low for n, d in self.dims.items()}


def static_size(size: Any) -> int | None:
    """``size`` as an int if it is one at every size (a plain int or a constant SymInt)."""
    if isinstance(size, int):
        return size
    if isinstance(size, torch.SymInt):
        from torch.fx.experimental.symbolic_shapes import is_concrete_int

        return int(size) if is_concrete_int(size) else None
    return None


def dynamic_axes(shapes: Sequence[Sequence[Any]]) -> list[int]:
    """Axes of a value that change with the dynamic dims, from its shape in every trace: the
    axes that hold a symbol, or (for baked dims) differ between the traces."""
    return [d for d in range(len(shapes[0]))
            if any(static_size(s[d]) is None for s in shapes) or len({static_size(s[d]) for s in shapes}) > 1]
