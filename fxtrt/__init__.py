"""fxtrt: PyTorch models to dynamic-batch ONNX (and TensorRT plans) that match the original.

The pipeline is ``frontend`` (torch.export capture) → ``passes`` (graph rewrites) → ``backend``
(ONNX emission, cleanup, verification) → ``Report``.
"""
from fxtrt.api import CompiledModel, compile
from fxtrt.loading import load
from fxtrt.onnx_export import onnx_export
from fxtrt.errors import (
    CaptureError,
    ConfigError,
    EmitError,
    EngineError,
    FxtrtError,
    GeneralizationError,
    PassError,
    PrecisionError,
    RunError,
    StructureError,
    VerificationError,
)
from fxtrt.explain import Explanation, explain
from fxtrt.passes.infra import Change, PassContext, PassResult
from fxtrt.report import Report

__version__ = "0.1.0"

__all__ = [
    "CaptureError", "CompiledModel", "ConfigError", "EmitError", "EngineError", "FxtrtError",
    "Change", "Explanation", "GeneralizationError", "PassContext", "PassError", "PassResult", "PrecisionError",
    "Report", "RunError", "StructureError", "VerificationError", "compile", "explain", "onnx_export",
]
