"""Imported once by each zoo fork server, so every job's child starts with the libraries loaded.

torch, the exporters (torch.onnx, onnxscript, onnx, onnxruntime, onnxsim) and the zoo's own
modules always; each model library only if the run covers its zoo (``ZOOS_ENV``, set by the job
before the server starts), since importing all four costs seconds a small run would wait for.
Then one tiny ``torch.onnx.export(dynamo=True)``: torch.export and the ONNX exporter initialise
much of themselves on first use, which each child would otherwise pay again. fxtrt is not
imported here: each child imports it afresh (0.3 s), so a run records the fxtrt it ran, not the
one the server started with.
"""
from __future__ import annotations

import contextlib
import gc
import importlib
import io
import logging
import os
import tempfile

from benchmarks.zoo.isolate import ZOOS_ENV

BASE = ("torch", "torch._dynamo", "torch.onnx", "torch.onnx._internal.exporter._core", "onnxscript", "onnx",
        "onnxruntime", "onnxsim", "numpy", "psutil", "benchmarks.worker", "benchmarks.zoo.child")
BY_ZOO = {"timm": ("torchvision", "timm"), "tv": ("torchvision",), "hf": ("transformers",),
          "ultralytics": ("torchvision", "ultralytics.nn.tasks")}

# Before transformers and ultralytics are imported: no hub calls, settings out of the home dir.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "fxtrt-ultralytics"))
os.environ.setdefault("YOLO_VERBOSE", "False")


def _modules() -> list[str]:
    zoos = [z for z in os.environ.get(ZOOS_ENV, ",".join(BY_ZOO)).split(",") if z in BY_ZOO]
    return list(dict.fromkeys([*BASE, *(m for z in zoos for m in BY_ZOO[z])]))


def _warm_up() -> None:
    import torch

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()).eval()
        torch.onnx.export(model, (torch.randn(2, 8),), f"{tmp}/warm.onnx", dynamo=True,
                          dynamic_shapes=({0: torch.export.Dim.DYNAMIC},), verbose=False)
    logging.getLogger("torch.onnx").setLevel(logging.NOTSET)


for _name in _modules():
    try:
        importlib.import_module(_name)
    except Exception:  # noqa: BLE001 - a child that needs it imports it, and reports its failure
        pass
try:
    _warm_up()
except Exception:  # noqa: BLE001 - a cold child is slower, not wrong
    pass
# Children would otherwise re-scan (and copy-on-write touch) every imported object on each gc pass.
gc.freeze()
