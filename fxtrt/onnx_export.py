"""The seed's one-call helper, ``torchpipe.utils.models.onnx_export``, on top of :func:`fxtrt.compile`."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from fxtrt.api import compile
from fxtrt.artifacts.onnx_model import MODEL_FILE
from fxtrt.errors import StructureError


def onnx_export(model: torch.nn.Module, onnx_path: str | Path, input: torch.Tensor | None = None, opset: int = 17) -> Path:
    """The seed's helper (torchpipe.utils.models.onnx_export): dynamic batch, simplified, verified.

    The default input is ``torch.randn(1, 3, 224, 224)``; the ONNX model lands at ``onnx_path``.
    """
    path = Path(onnx_path)
    if input is None:
        input = torch.randn(1, 3, 224, 224)
    with tempfile.TemporaryDirectory(prefix=".fxtrt-export-", dir=path.parent if path.parent.exists() else None) as tmp:
        compiled = compile(model, input, batch=(1, 8, 32), opset=opset, out_dir=Path(tmp) / "out")
        if compiled.buckets is not None:  # the helper promises one dynamic-batch model
            why = compiled.report.stages["buckets"]
            raise StructureError(why["why"], node=why.get("node"), source=why.get("source"),
                                 hint="use fxtrt.compile(...), which serves this model as a static-batch bucket set")
        for extra in compiled.onnx_path.parent.glob(MODEL_FILE + ".data"):
            shutil.move(str(extra), str(path.parent / extra.name))
        os.replace(compiled.onnx_path, path)
    return path
