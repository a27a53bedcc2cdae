"""Real ONNX models exported from small PyTorch modules, shared by the artifact tests."""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch

from fxtrt.backend.verify import ReferenceRunner
from fxtrt.compare import Tolerance
from fxtrt.settings import DynamicDim, Settings

BATCH = DynamicDim("batch", 1, 4, 8, ((0, 0),), 1)
FP32 = Tolerance(1e-4, 1e-3)


def export(module: torch.nn.Module, example: torch.Tensor, path: Path, *, dynamic: bool = True) -> Path:
    """``module`` as ONNX at ``path``: input ``x``, output ``output``, the batch dynamic unless not."""
    shapes = ({0: torch.export.Dim("batch", min=1, max=64)},) if dynamic else None
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module.eval(), (example,), dynamo=True, input_names=["x"], output_names=["output"],
                                    dynamic_shapes=shapes, verbose=False)
    program.save(str(path))
    return path


def reference(module: torch.nn.Module, example: torch.Tensor) -> ReferenceRunner:
    return ReferenceRunner(module.eval(), (example,), (BATCH,), ["x"], ["output"])


def settings(**kwargs) -> Settings:
    """The frozen settings an artifact reads (tolerances, file limits, engine options)."""
    return Settings(dims=(BATCH,), input_names=("x",), **kwargs)
