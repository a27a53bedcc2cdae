"""Map graph nodes and exceptions back to the user's own ``file:line``.

torch.export records a ``stack_trace`` on every node. Its innermost frame is often inside
``torch/nn/modules`` (a Linear's ``F.linear``); the user wants the line of *their* model that
called it, so library frames are skipped.
"""
from __future__ import annotations

import importlib.util
import linecache
import os
import re
import traceback
from dataclasses import dataclass
from typing import Any
from types import TracebackType

import torch.fx

_FRAME_RE = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)')
# Packages whose frames are never the line a user wants to see: the toolchain, and fxtrt itself.
# Model packages (torchvision, transformers, timm, ultralytics) are the user's model code.
_TOOLCHAIN = ("torch", "onnx", "onnxscript", "onnx_ir", "onnxruntime", "onnxsim", "onnx_graphsurgeon",
              "polygraphy", "fxtrt", "sympy", "numpy", "functorch", "triton", "typing_extensions")


def _package_dirs(names: tuple[str, ...]) -> tuple[str, ...]:
    dirs = []
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        for loc in (spec.submodule_search_locations or []) if spec else []:
            dirs.append(os.path.join(os.path.realpath(loc), ""))
    return tuple(dirs)


_LIBRARY_DIRS = _package_dirs(_TOOLCHAIN)
_SITE_MARKERS = ("site-packages", "dist-packages")


@dataclass(frozen=True)
class SourceLocation:
    file: str
    line: int
    code: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def is_library(path: str) -> bool:
    """Library frames: the toolchain (torch, onnx, ...), fxtrt and the standard library; model
    packages and the user's own files are not."""
    if path.startswith("<"):
        return True
    real = os.path.realpath(path)
    if real.startswith(_LIBRARY_DIRS):
        return True
    return f"{os.sep}lib{os.sep}python3" in real and not any(m in real for m in _SITE_MARKERS)


def _pick(frames: list[tuple[str, int]]) -> SourceLocation | None:
    """The innermost frame outside the toolchain; None when every frame is inside it."""
    user = [f for f in frames if not is_library(f[0])]
    if not user:
        return None
    file, line = user[-1]
    return SourceLocation(file, line, linecache.getline(file, line).strip())


def location_of_trace(trace: str | None) -> SourceLocation | None:
    """The innermost user frame in a recorded stack trace (FX node meta, ONNX node metadata)."""
    frames = [(m["file"], int(m["line"])) for m in _FRAME_RE.finditer(trace or "")]
    return _pick(frames)


def location_of(node: torch.fx.Node) -> SourceLocation | None:
    """The innermost user frame in the node's recorded stack trace."""
    return location_of_trace(node.meta.get("stack_trace"))


def source_of(node: torch.fx.Node) -> str | None:
    """``file:line`` of the user code that created ``node``, or None when unknown."""
    loc = location_of(node)
    return str(loc) if loc else None


def location_of_traceback(tb: TracebackType | None) -> SourceLocation | None:
    """The innermost user frame of an exception raised while tracing the user's model."""
    return location_of_frames([(f.filename, f.lineno or 0) for f in traceback.extract_tb(tb)])


def location_of_frames(frames: list[tuple[str, int]]) -> SourceLocation | None:
    """The innermost user frame of (file, line) pairs, outermost first."""
    return _pick(frames)


def module_path_of(node: torch.fx.Node) -> str | None:
    """The dotted submodule path (``layer1.0.conv2``) that produced ``node``, if recorded."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return path or None


def onnx_node_source(node: Any) -> str | None:
    """The user's ``file:line`` for an ONNX node (``onnx.NodeProto``) emitted by torch.onnx, from
    the stack trace torch.onnx records in its metadata."""
    trace = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.stack_trace"), None)
    loc = location_of_trace(trace)
    return str(loc) if loc else None
