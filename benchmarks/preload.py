"""Imported once by the fork server, so that each job's child starts with the heavy libraries loaded.

Afterwards ``gc.freeze()`` moves every object created so far out of the
garbage collector's reach, which makes a ``gc.collect()`` in a child cheap.
Every import is guarded: a library that fails to import here is simply
imported (and fails, and is reported) in the child that needs it.
"""

from __future__ import annotations

import gc
import importlib

_MODULES = (
    "torch",
    "torch._dynamo",
    "torch.onnx",
    "torch.onnx._internal.exporter._core",
    "onnxscript",
    "torchvision",
    "timm",
    "transformers",
    "transformers.models.bert.modeling_bert",
    "onnx",
    "onnxruntime",
    "onnxsim",
    "numpy",
    "psutil",
    "matplotlib.pyplot",
    "benchmarks.worker",
    # Each child re-runs the parent's main module, benchmarks.fidelity, as __mp_main__; with its
    # imports (matplotlib among them) loaded here, that costs nothing.  (Preloading the module
    # itself would make runpy warn in every child.)
    "benchmarks.runner",
    "benchmarks.report",
    "benchmarks.figure",
)


def _preload() -> None:
    for name in _MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - see the module docstring
            pass


_preload()
# Children would otherwise re-scan (and copy-on-write touch) every imported object on each gc pass.
gc.freeze()
