"""What compile hands back: the verified artifact, its report, and ways to run it.

``run`` and ``__call__`` serve through the artifact's runner, the same one verification drove.

Example::

    compiled = fxtrt.compile(model, torch.randn(1, 3, 224, 224), batch=(1, 8, 32), out_dir="out")
    compiled.run(x)   # tuple of numpy arrays, on ONNX Runtime (CPU)
    compiled(x)       # torch tensors, in the structure model(x) returns
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.utils._pytree as pytree

from fxtrt.artifacts.base import Artifact
from fxtrt.artifacts.claims import Claims
from fxtrt.errors import ConfigError
from fxtrt.artifacts.engine_set import EngineSet
from fxtrt.frontend.bind import Binding
from fxtrt.frontend.capture import CapturedGraph
from fxtrt.report import Report
from fxtrt.settings import Settings


class CompiledModel:
    """The verified artifact: its ONNX path, its report, and ways to run it.

    ``onnx_path`` is the model that matches ``precision``: ``model.onnx`` (fp32) or
    ``model_fp16.onnx``; the fp32 model stays in ``report.artifacts["onnx_fp32"]``. For a bucket
    set, ``buckets`` lists the static batch sizes, ``onnx_paths`` maps each to its model,
    ``onnx_path`` is the largest bucket's, and ``run`` serves any batch size through them.
    ``artifact`` is what ``run`` serves through; ``made`` the artifacts compile's stages made
    beside it, by stage name; ``engines`` the TensorRT engine set among them, if planned.
    """

    def __init__(self, artifact: Artifact, report: Report, captured: CapturedGraph, settings: Settings,
                 binding: Binding | None = None, graph_module: torch.fx.GraphModule | None = None,
                 made: Mapping[str, Artifact] | None = None, claims: Claims | None = None) -> None:
        self.artifact = artifact
        self.made: dict[str, Artifact] = dict(made or {})
        self.engines: EngineSet | None = self.made.get("engines")  # type: ignore[assignment]
        self.onnx_path = artifact.primary
        self.onnx_paths: dict[int, Path] = {b: m.primary for b, m in artifact.members().items() if b is not None}
        self.buckets: tuple[int, ...] | None = tuple(self.onnx_paths) or None
        self.graph_module = graph_module  # the FX graph after the passes: what was emitted
        self.report = report
        self.settings = settings
        self.input_names = captured.input_names
        self.output_names = captured.output_names
        self._out_spec = captured.out_spec
        self._binding = binding or Binding(captured.input_names, len(captured.input_names))
        # what run() serves: the example's static sizes and the verified ranges of the dynamic dims
        self.claims = claims or Claims.of(self.input_names, [tuple(t.shape) for t in captured.example],
                                          artifact.claimed())

    def run(self, *inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        """Run with ONNX Runtime (CPU) through the artifact's runner, the one verification drove.
        Inputs are torch tensors or numpy arrays, given as compile was given them: by position,
        by keyword or as one dict. A bucket set splits the batch into bucket-sized chunks, pads
        the last one and slices the outputs back (see ``fxtrt.artifacts.bucket_set``).

        Only what was claimed and verified is served (``claims``): a size outside a dim's range,
        off its step, two sizes for one dim, or another size on a static axis is a ConfigError."""
        tensors = self._binding.tensors(inputs, kwargs)
        self.claims.check(tensors)
        return self.artifact.run(tensors)

    def __call__(self, *inputs: Any, **kwargs: Any) -> Any:
        """Run and return torch tensors in the structure the original model returns."""
        # np.ascontiguousarray makes a 0-d array 1-d: keep each output's own shape
        outs = [torch.from_numpy(np.ascontiguousarray(a).reshape(np.shape(a))) for a in self.run(*inputs, **kwargs)]
        return pytree.tree_unflatten(outs, self._out_spec)

    def save(self, path: str | os.PathLike) -> Path:
        """Copy the artifact's files and its report to ``path`` (created; files of the same name
        replaced), for :func:`fxtrt.load` to serve without recompiling. Written beside ``path``
        first and moved into place, so a failed save leaves no half-written file."""
        src = Path(self.artifact.primary).parent
        dest = Path(path).expanduser().resolve()
        if dest == src.resolve():
            return dest
        if dest.exists() and not dest.is_dir():
            raise ConfigError(f"save: {dest} exists and is not a directory")
        names = sorted({Path(p).name for p in self.report.artifacts.values() if Path(p).parent.resolve() == src.resolve()}
                       | {"report.json"})
        dest.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".fxtrt-save-", dir=dest))
        try:
            for name in names:
                if (src / name).is_file():
                    shutil.copy2(src / name, staging / name)
            for name in names:
                if (staging / name).exists():
                    os.replace(staging / name, dest / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return dest

    def __repr__(self) -> str:
        return f"CompiledModel({self.onnx_path})"
