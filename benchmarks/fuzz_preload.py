"""Imported once by the fuzzer's fork server, so each model's child starts warm.

Besides the imports, one tiny compile runs here: torch.export, torch.onnx and onnxsim import
and initialise much of themselves on first use (about 5 s), which every forked child would
otherwise pay again.
"""
from __future__ import annotations

import gc
import logging
import tempfile

import onnxruntime  # noqa: F401
import onnxsim  # noqa: F401
import torch

import benchmarks.hazards  # noqa: F401
import benchmarks.outcomes  # noqa: F401
import fxtrt


def _warm_up() -> None:
    logging.getLogger("fxtrt").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()).eval()
        fxtrt.compile(model, torch.randn(1, 6, 8), batch=(1, 2, 4), dynamic={0: {1: (4, 6, 8)}}, out_dir=f"{tmp}/out")
    logging.getLogger("fxtrt").setLevel(logging.NOTSET)


try:
    _warm_up()
except Exception:  # a cold child is slower, not wrong
    pass
gc.freeze()
