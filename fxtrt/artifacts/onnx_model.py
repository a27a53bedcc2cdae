"""One ONNX model, dynamic in its dims or static, run by ONNX Runtime on the CPU.

Serving and verification open the same session (:mod:`fxtrt.backend.onnxruntime`), once.

Example::

    model = OnnxModel.compiled(Path("out/model.onnx"), captured, settings)
    model.serves({"batch": 5}), model.describe({"batch": 5})   # (True, "")
    model.run([torch.randn(5, 3, 224, 224)])                    # tuple of numpy arrays
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from polygraphy.backend.base import BaseRunner

from fxtrt.artifacts.base import Artifact, in_ranges
from fxtrt.artifacts.claims import DimClaim
from fxtrt.backend.onnxruntime import onnxrt_runner, open_session
from fxtrt.compare import Tolerance
from fxtrt.frontend.capture import CapturedGraph
from fxtrt.settings import DynamicDim, Settings
from fxtrt.sizes import verification_points

MODEL_FILE = "model.onnx"
FP16_FILE = "model_fp16.onnx"


def bucket_file(batch: int, precision: str = "fp32") -> str:
    """``model_b4.onnx``, or ``model_fp16_b4.onnx`` (its engine: ``model_fp16_b4.engine``)."""
    return f"model_fp16_b{batch}.onnx" if precision == "fp16" else f"model_b{batch}.onnx"


def onnx_entries(key: str, path: Path) -> dict[str, Path]:
    """``report.artifacts`` entries of one ONNX file: ``key`` -> the file, and its external weight
    file where it has one (``external_data`` for model.onnx, ``external_data:<file>`` for others)."""
    out = {key: path}
    data = path.with_name(path.name + ".data")
    if data.exists():
        out["external_data" if path.name == MODEL_FILE else f"external_data:{path.name}"] = data
    return out


def onnx_file(bucket: int | None, precision: str = "fp32") -> str:
    """The file name of the one model (``bucket=None``) or of a bucket's, at ``precision``."""
    if bucket is None:
        return FP16_FILE if precision == "fp16" else MODEL_FILE
    return bucket_file(bucket, precision)


class OnnxModel(Artifact):
    """``path`` run by ONNX Runtime (CPU). It serves every size in ``dims``' ranges and, where
    ``fixed`` names a size (a bucket's batch), only that size."""

    def __init__(
        self,
        path: Path,
        input_names: Sequence[str],
        output_names: Sequence[str],
        *,
        dims: Sequence[DynamicDim] = (),
        fixed: Mapping[str, int] | None = None,
        points: Sequence[Mapping[str, int]] = ({},),
        tolerance: Tolerance,
        name: str = "onnxruntime",
        holes: Sequence[Any] = (),
    ) -> None:
        self.path = Path(path)
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        self.dims = tuple(dims)
        self.fixed = dict(fixed or {})
        self.points = tuple(dict(p) for p in points)
        self.tolerance = tolerance
        self.name = name
        self.holes = tuple(holes)
        self._session: Any = None

    @classmethod
    def compiled(cls, path: Path, captured: CapturedGraph, settings: Settings) -> "OnnxModel":
        """The model compile lowered (dynamic in ``settings.dims``, static with none), checked at
        the verification points."""
        holes = [p for h in captured.holes for p in h.points]
        return cls(path, captured.input_names, captured.output_names, dims=settings.dims,
                   points=verification_points(settings.dims, captured.traced_low(), holes),
                   tolerance=Tolerance(settings.atol, settings.rtol), holes=captured.holes)

    @property
    def files(self) -> tuple[Path, ...]:
        data = self.path.with_name(self.path.name + ".data")
        return (self.path, data) if data.exists() else (self.path,)

    def session(self) -> Any:
        """The ONNX Runtime session, opened on first use and shared by every runner."""
        if self._session is None:
            self._session = open_session(self.path)
        return self._session

    def runner(self) -> BaseRunner:
        return onnxrt_runner(self.session, name=self.name)

    def serves(self, sizes: Mapping[str, int]) -> bool:
        return in_ranges(sizes, self.dims, self.fixed)

    def members(self) -> dict[int | None, Artifact]:
        return {None: self}

    def with_members(self, paths: Mapping[int | None, Path], *, name: str, tolerance: Tolerance) -> "OnnxModel":
        """The same model over another file with the same inputs and outputs (its fp16 twin)."""
        return OnnxModel(paths[None], self.input_names, self.output_names, dims=self.dims, fixed=self.fixed,
                         points=self.points, tolerance=tolerance, name=name, holes=self.holes)

    def moved_to(self, directory: Path) -> "OnnxModel":
        return OnnxModel(Path(directory) / self.path.name, self.input_names, self.output_names, dims=self.dims,
                         fixed=self.fixed, points=self.points, tolerance=self.tolerance, name=self.name,
                         holes=self.holes)

    def index(self) -> dict[str, Path]:
        return onnx_entries("onnx", self.path)

    def claimed(self) -> tuple[DimClaim, ...]:
        """Its dims; a size ``fixed`` (a bucket's batch) is no dim it serves but a static size."""
        return tuple(DimClaim.of(d) for d in self.dims if d.name not in self.fixed)

    def __repr__(self) -> str:
        return f"OnnxModel({self.path})"
