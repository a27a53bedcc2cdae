"""Running an ONNX Runtime session: through Polygraphy's ``OnnxrtRunner`` where a ``Comparator``
drives it, or directly with a feed cast to the types the model declares.

Example::

    with onnxrt_runner(SessionLoader(path), name="onnxruntime") as runner:
        runner.infer({"x": x})
    run_session(open_session(path), {"x": x.astype(np.float64)})   # cast to the model's float32
"""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from polygraphy.backend.base import BaseRunner

# ONNX Runtime's type strings -> numpy, for the feeds :func:`run_session` casts.
ORT_TYPES: dict[str, type] = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
}


def onnxrt_runner(session: Any | Callable[[], Any], name: str | None = None) -> BaseRunner:
    """Polygraphy's ``OnnxrtRunner`` over a session or a loader of one, which also records how long
    its activation took (``activation_seconds``: opening the session, when the loader opens one),
    for verification's measured floor."""
    from polygraphy.backend.onnxrt import OnnxrtRunner

    class TimedOnnxrtRunner(OnnxrtRunner):
        activation_seconds = 0.0

        def activate_impl(self) -> None:
            start = time.perf_counter()
            super().activate_impl()
            self.activation_seconds = time.perf_counter() - start

    return TimedOnnxrtRunner(session, name=name)


def cast_feed(session: Any, arrays: Mapping[str, Any] | Sequence[Any]) -> dict[str, np.ndarray]:
    """The feed with each array cast to the type its input declares: by name from a mapping (names
    the model lacks are dropped), or by position from a sequence."""
    inputs = session.get_inputs()
    if isinstance(arrays, Mapping):
        pairs = [(i, arrays[i.name]) for i in inputs if i.name in arrays]
    else:
        pairs = list(zip(inputs, arrays))
    return {i.name: np.ascontiguousarray(np.asarray(a).astype(ORT_TYPES.get(i.type, np.asarray(a).dtype), copy=False))
            for i, a in pairs}


def run_session(session: Any, arrays: Mapping[str, Any] | Sequence[Any]) -> dict[str, np.ndarray]:
    """Every output of ``session`` at ``arrays`` (see :func:`cast_feed`), by name."""
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, cast_feed(session, arrays))))
