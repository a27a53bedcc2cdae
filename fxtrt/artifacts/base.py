"""The one protocol every output of compile implements, and the stage that makes each kind.

An ONNX model, a bucket set, an fp16 model and a set of TensorRT engines all answer the same
questions, so one verification stage (:func:`fxtrt.backend.verify.verify`) checks every kind,
:class:`fxtrt.CompiledModel` serves through the same runner verification drove, the report
takes each kind's entries and text from the kind, and ``report.artifacts`` its files.

What a kind declares (:class:`Artifact`): ``files`` / ``primary``, ``runner()``, the ``points``
it is verified at and the ``tolerance`` it must pass, ``claimed()`` (the dims it serves),
``serves`` / ``describe``, ``moved_to``, ``index()`` (its ``report.artifacts`` entries),
``record()`` / ``stage_text`` (its ``report.stages`` entries and their text), ``name``, and for
ONNX kinds ``members()`` / ``with_members()`` (what fp16 and the engine planner work on).
How compile makes a kind after the ONNX model is an :class:`ArtifactStage` in
:data:`fxtrt.stages.STAGES`.

Example::

    artifact.files                       # (Path("out/model_b1.onnx"), ...)
    artifact.serves({"batch": 13})       # True
    artifact.describe({"batch": 13})     # "served as 13->16"
    with artifact.runner() as runner:    # a Polygraphy BaseRunner, any supported size
        runner.infer({"x": x13})
"""
from __future__ import annotations

import abc
import functools
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.datatype import DataType
from polygraphy.logger import G_LOGGER

from fxtrt.artifacts.claims import DimClaim
from fxtrt.backend.verify import ReferenceRunner, VerifyRow, format_rows, raise_on_failure, runtime_error
from fxtrt.compare import Tolerance
from fxtrt.errors import FxtrtError, RunError, VerificationError
from fxtrt.settings import Settings

StageText = Callable[[str, dict], list]  # (stage name, its report.stages entry) -> text lines


class Artifact(abc.ABC):
    """What compile produced: its files, and a runner that takes feeds at any size it serves.

    ``points`` are the sizes compile verifies it at and ``tolerance`` the check it must pass;
    ``notes`` go into the report; ``name`` names its runner in verification rows. A new kind
    implements :attr:`files`, :meth:`runner`, :meth:`serves` and :meth:`moved_to`; the rest has
    defaults.
    """

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    points: tuple[dict[str, int], ...]
    tolerance: Tolerance
    name: str = "artifact"
    notes: tuple[str, ...] = ()
    holes: tuple[Any, ...] = ()  # facts torch assumed that fail at some claimed sizes (frontend.guards.Hole)
    stage_text: ClassVar[Mapping[str, StageText]] = {}  # text for the report.stages entries record() writes

    @property
    @abc.abstractmethod
    def files(self) -> tuple[Path, ...]:
        """Every file the artifact consists of."""

    @property
    def primary(self) -> Path:
        """The file that stands for the artifact (``CompiledModel.onnx_path``)."""
        return self.files[0]

    @abc.abstractmethod
    def runner(self) -> BaseRunner:
        """A Polygraphy runner over the artifact that takes feeds at any size it serves."""

    @abc.abstractmethod
    def serves(self, sizes: Mapping[str, int]) -> bool:
        """Whether the artifact runs at ``sizes`` (dim name -> size)."""

    def describe(self, sizes: Mapping[str, int]) -> str:
        """How ``sizes`` are served, as verification rows note it ("served as 13->16", "served as 16+1");
        empty when the artifact runs them as they are."""
        return ""

    @abc.abstractmethod
    def moved_to(self, directory: Path) -> "Artifact":
        """The same artifact with its files in ``directory`` (where the staging dir moved them)."""

    def members(self) -> dict[int | None, "Artifact"]:
        """The ONNX models inside, by bucket (None: the one model), for fp16 and engine planning."""
        return {}

    def with_members(self, paths: Mapping[int | None, Path], *, name: str, tolerance: Tolerance) -> "Artifact":
        """The same artifact over other ONNX files, one per :meth:`members` key, with the same inputs
        and outputs (its fp16 twin); a kind without ONNX members has none."""
        raise NotImplementedError(f"{type(self).__name__} has no ONNX members to replace")

    def parts(self) -> Sequence["Artifact"]:
        """What verification checks with one Comparator each (an engine set: every engine)."""
        return (self,)

    @property
    def verifiable(self) -> bool:
        """Whether verification can run it here (planned TensorRT engines need TensorRT and a GPU)."""
        return True

    def verify_runners(self) -> list[BaseRunner]:
        """The runners verification compares with the reference: the serving runner, by default."""
        return [self.runner()]

    def settle(self, rows: Sequence[VerifyRow]) -> tuple["Artifact", list[VerifyRow]]:
        """Before :meth:`check`: an artifact that can honestly serve less than it tried to (a bucket
        set without chunks) returns that narrower self and the rows that remain claims; by default
        it is what it is."""
        return self, list(rows)

    def check(self, rows: Sequence[VerifyRow], divergence: Any = None) -> None:
        """Raise this kind's error when a verification row failed: where every failing size is one
        at which a fact torch assumed fails, that assumption is the cause, and the error says so."""
        bad = [r for r in rows if not r.passed]
        hole = next((h for h in self.holes if bad and all(h.covers(r.sizes) for r in bad)), None)
        limit = hole.limit([r.sizes for r in bad]) if hole is not None else None
        if limit is not None:
            raise limit
        if hole is not None:
            raise VerificationError(
                f"{hole.describe()}; there the artifact differs from the model, which takes another path at those "
                f"sizes (|a-b| <= {self.tolerance.atol:g} + {self.tolerance.rtol:g}*|ref|):\n{format_rows(rows)}",
                rows=list(rows), source=hole.source,
                hint="give the dim a step, (min, opt, max, step), that skips those sizes, or narrow the range")
        raise_on_failure(rows, self.tolerance.atol, self.tolerance.rtol, divergence)

    def index(self) -> dict[str, Path]:
        """Its files (external weight files included) under their ``report.artifacts`` keys."""
        return {}

    def claimed(self) -> tuple["DimClaim", ...]:
        """The dynamic dims it serves, with the ranges it was verified over (every call is checked
        against them before it runs: :class:`fxtrt.artifacts.claims.Claims`)."""
        return tuple(DimClaim.of(d) for d in getattr(self, "dims", ()))

    def record(self) -> dict[str, dict[str, Any]]:
        """What it adds to ``report.stages``, by stage name."""
        return {}

    def run(self, inputs: Sequence[Any]) -> tuple[np.ndarray, ...]:
        """Serve one call (torch tensors or arrays, in input order) through :meth:`runner`, so what
        runs is what verification checked. Inputs are cast to the types the artifact declares."""
        runner = self._serving
        try:
            with G_LOGGER.verbosity(G_LOGGER.CRITICAL), runner:
                feed = OrderedDict()
                for (name, meta), value in zip(runner.get_input_metadata(use_numpy_dtypes=False).items(), inputs):
                    arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
                    feed[name] = arr.astype(_numpy_dtype(meta.dtype, arr.dtype), copy=False)
                outputs = runner.infer(feed, check_inputs=False)
        except FxtrtError:
            raise
        except Exception as exc:  # onnxruntime and Polygraphy raise their own types
            shapes = ", ".join(str(tuple(np.shape(v))) for v in inputs)
            raise runtime_error(exc, f"{self.primary.name} failed to run on inputs of shapes {shapes}", self.files,
                                RunError, hint="check that the original model accepts these inputs (index values in "
                                               "range, sizes within the dims of report.io): the message names the "
                                               "ONNX node that failed") from exc
        return tuple(outputs.values())

    @functools.cached_property
    def _serving(self) -> BaseRunner:
        return self.runner()


def _numpy_dtype(dtype: Any, default: np.dtype) -> np.dtype:
    try:
        return np.dtype(DataType.to_dtype(dtype, "numpy"))
    except Exception:
        return default


def in_ranges(sizes: Mapping[str, int], dims: Sequence[Any], fixed: Mapping[str, int] | None = None) -> bool:
    """Whether ``sizes`` lie in the dims' ranges and match the ``fixed`` sizes (names not given pass)."""
    if any(k in sizes and sizes[k] != v for k, v in (fixed or {}).items()):
        return False
    return all(d.min <= sizes[d.name] <= d.max for d in dims if d.name in sizes)


@dataclass(frozen=True)
class Source:
    """What a stage makes its artifact from: the verified artifact compile serves so far (the ONNX
    model or bucket set, or its fp16 twin), the compile's one PyTorch reference (None with
    ``verify=False``), the staging directory its files go to, and the settings."""

    served: Artifact
    reference: ReferenceRunner | None
    directory: Path
    settings: Settings


@dataclass(frozen=True)
class ArtifactStage:
    """One entry of compile's stage list (:data:`fxtrt.stages.STAGES`): after the ONNX model is
    lowered and verified, each stage whose ``wanted(settings)`` holds makes its artifact from the
    :class:`Source`; compile adds it to the report, verifies it at its points (when it is
    :attr:`Artifact.verifiable`) and lists its files. With ``replaces`` the new artifact is what
    compile serves from then on (fp16); otherwise it is made beside it (engines)."""

    name: str  # its progress line and report.timings key
    make: Callable[[Source], Artifact]
    wanted: Callable[[Settings], bool] = lambda settings: True
    replaces: bool = False
