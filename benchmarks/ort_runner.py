"""Run an exported ONNX file on ONNX Runtime's CPU provider and time it."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping, Sequence

import numpy as np
import onnxruntime as ort


class FeedError(RuntimeError):
    """The ONNX graph's inputs cannot be matched to the model's inputs."""


@dataclass(frozen=True)
class LatencySettings:
    """Repeat at least ``min_runs`` and at most ``max_runs`` times, stopping once ``budget_s`` is spent.

    No warm-up by default: the fidelity check has already run every batch
    size once on the same session.
    """

    warmup: int = 0
    min_runs: int = 3
    max_runs: int = 20
    budget_s: float = 2.0


class ServedSession:
    """fxtrt's static-batch bucket set (a directory ``fxtrt.compile`` wrote) behind ONNX Runtime's
    session calls: ``run`` goes through ``fxtrt.load(dir).run``, which splits the batch into the
    buckets, pads the last chunk and slices the outputs back, as its users are served. Its
    sessions use fxtrt's own ONNX Runtime options."""

    def __init__(self, directory: Path) -> None:
        import fxtrt

        self.compiled = fxtrt.load(directory)

    def get_inputs(self) -> list[Any]:
        return [SimpleNamespace(name=name, shape=None) for name in self.compiled.input_names]

    def run(self, output_names: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.compiled.run(*[feed[name] for name in self.compiled.input_names]))


def make_session(path: Path, threads: int | None = None) -> Any:
    """A CPU session with a fixed thread count, so latencies compare across exporters; for a
    directory (fxtrt's bucket set), a :class:`ServedSession`."""
    if Path(path).is_dir():
        return ServedSession(Path(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def input_indices(session: ort.InferenceSession, n_inputs: int, names: Sequence[str] | None) -> dict[str, int]:
    """Graph input name -> model input index: by name when the exporter said which name is which, else by position.

    A graph may drop an input the model never reads; that is fine.  A graph
    input we cannot account for is a FeedError.
    """
    graph_inputs = [i.name for i in session.get_inputs()]
    if names is not None and set(graph_inputs) <= set(names):
        return {name: list(names).index(name) for name in graph_inputs}
    if len(graph_inputs) == n_inputs:
        return {name: i for i, name in enumerate(graph_inputs)}
    raise FeedError(f"graph inputs {graph_inputs} do not match model inputs {list(names or [])}")


def build_feed(
    session: ort.InferenceSession, arrays: Sequence[np.ndarray], names: Sequence[str] | None
) -> dict[str, np.ndarray]:
    """Map graph inputs to arrays (see ``input_indices``)."""
    return {name: arrays[i] for name, i in input_indices(session, len(arrays), names).items()}


def fixed_dims(
    session: ort.InferenceSession, n_inputs: int, names: Sequence[str] | None, dynamic: Mapping[int, Sequence[int]]
) -> list[str]:
    """``["input[2]=416", ...]``: dims declared dynamic (model input index -> dims) that the graph fixed to a number."""
    try:
        indices = input_indices(session, n_inputs, names)
    except FeedError:
        return []
    fixed = []
    for graph_input in session.get_inputs():
        shape = graph_input.shape or []
        for d in dynamic.get(indices[graph_input.name], ()):
            if d < len(shape) and isinstance(shape[d], int):
                fixed.append(f"{graph_input.name}[{d}]={shape[d]}")
    return fixed


def run(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(out) for out in session.run(None, feed)]


def median_latency_ms(session: ort.InferenceSession, feed: dict[str, np.ndarray], settings: LatencySettings) -> float:
    """Median wall time of repeated runs; stops early once ``budget_s`` is spent (after ``min_runs``)."""
    for _ in range(settings.warmup):
        session.run(None, feed)
    times = []
    start = time.perf_counter()
    while len(times) < settings.max_runs:
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
        if len(times) >= settings.min_runs and time.perf_counter() - start > settings.budget_s:
            break
    return statistics.median(times) * 1e3
