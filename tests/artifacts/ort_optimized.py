"""A toy artifact kind, the whole of it in one module: the ONNX model re-saved with ONNX Runtime's
offline graph optimisations as ``model_ort.onnx``.

``ORT_ENABLE_BASIC`` keeps the file portable (constant folding, redundant-node removal: only
standard ONNX ops, no provider-specific fusions). The record verifies at the ONNX model's own
points and tolerance, serves what it serves, and lists ``onnx_ort`` in ``report.artifacts``;
compile takes it up with one line, ``register_stage(STAGE)``, and no edit to api.py, report.py or
staging.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import onnx
import onnxruntime as ort
from polygraphy.backend.base import BaseRunner

from fxtrt.artifacts.base import Artifact, ArtifactStage, Source
from fxtrt.artifacts.claims import DimClaim
from fxtrt.backend.onnxruntime import onnxrt_runner, open_session
from fxtrt.compare import Tolerance

ORT_FILE = "model_ort.onnx"


class OrtOptimized(Artifact):
    """``path``, the optimised copy of ``source``'s one ONNX model, served and checked as it is."""

    def __init__(self, path: Path, source: Artifact, nodes: tuple[int, int]) -> None:
        self.path, self.source, self.nodes = Path(path), source, nodes
        self.input_names, self.output_names = source.input_names, source.output_names
        self.points, self.holes, self.name = source.points, source.holes, "onnxruntime-optimized"
        self.tolerance = Tolerance(source.tolerance.atol, source.tolerance.rtol, ORT_FILE, source.tolerance.roundoff)

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.path,)

    def runner(self) -> BaseRunner:
        return onnxrt_runner(open_session(self.path), name=self.name)

    def serves(self, sizes: Mapping[str, int]) -> bool:
        return self.source.serves(sizes)

    def claimed(self) -> tuple[DimClaim, ...]:
        return self.source.claimed()

    def moved_to(self, directory: Path) -> "OrtOptimized":
        return OrtOptimized(Path(directory) / self.path.name, self.source.moved_to(directory), self.nodes)

    def index(self) -> dict[str, Path]:
        return {"onnx_ort": self.path}

    def record(self) -> dict[str, dict[str, Any]]:
        return {"ort_optimized": {"model": self.path.name, "level": "basic",
                                  "nodes_before": self.nodes[0], "nodes_after": self.nodes[1]}}


def optimize(src: Source) -> OrtOptimized:
    """Re-save what compile serves (its one ONNX model) with ONNX Runtime's basic offline optimisations."""
    model = src.served.members()[None]
    dest = Path(src.directory) / ORT_FILE
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dest)
    ort.InferenceSession(str(model.primary), options, providers=["CPUExecutionProvider"])
    before = len(onnx.load(str(model.primary), load_external_data=False).graph.node)
    after = len(onnx.load(str(dest), load_external_data=False).graph.node)
    return OrtOptimized(dest, src.served, (before, after))


STAGE = ArtifactStage("ort_optimized", make=optimize, wanted=lambda settings: settings.buckets is None)
