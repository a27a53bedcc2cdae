"""Every ONNX Runtime session fxtrt opens is opened here, the same way.

Serving, verification, the fp16 repair and the divergence search all run ONNX models on the CPU;
a session opened with other options in one of them would make it judge a different model. The
options are those of Polygraphy's ``SessionFromOnnx`` (the CPU provider, one thread per CPU this
process may use); ``optimize=False`` turns off ONNX Runtime's graph fusions, which would hide
the effect of fp16 on a single node. ONNX Runtime is imported when a session is opened.

Example::

    loader = SessionLoader(Path("out/model.onnx"))   # nothing opened yet
    session = loader()                               # an onnxruntime.InferenceSession
    open_session(model_proto, optimize=False)        # the same, at once
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import onnx

log = logging.getLogger(__name__)

PROVIDERS = ("CPUExecutionProvider",)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class SessionLoader:
    """A lazy callable, as Polygraphy's loaders are: ``loader()`` opens the session.

    ``model``: a path, serialized bytes or an ``onnx.ModelProto``. ``quiet`` raises ONNX Runtime's
    log level to errors only, for sessions opened by the dozen on transformed models.
    """

    def __init__(self, model: Path | str | bytes | onnx.ModelProto, *, optimize: bool = True,
                 quiet: bool = False) -> None:
        self.model = model
        self.optimize = optimize
        self.quiet = quiet

    def __call__(self) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = _cpu_count()
        if not self.optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if self.quiet:
            options.log_severity_level = 3
        model = self.model
        if isinstance(model, onnx.ModelProto):
            model = model.SerializeToString()
        elif isinstance(model, Path):
            model = str(model)
        log.debug("opening an ONNX Runtime session (optimize=%s)", self.optimize)
        return ort.InferenceSession(model, sess_options=options, providers=list(PROVIDERS))

    def __repr__(self) -> str:
        what = self.model if isinstance(self.model, (str, Path)) else type(self.model).__name__
        return f"SessionLoader({what})"


def open_session(model: Path | str | bytes | onnx.ModelProto, *, optimize: bool = True, quiet: bool = False) -> Any:
    """The session :class:`SessionLoader` opens, opened now."""
    return SessionLoader(model, optimize=optimize, quiet=quiet)()
