"""Rewrite the cleaned ONNX model into forms ONNX Runtime's CPU provider runs fastest (issue 19, item 4).

Each rewrite is one module here, keeps the math, changes no graph input or output, and leaves
every dynamic dim as it was. Together they are the difference between fxtrt's file and the
legacy exporter's on a 4-layer BERT (hidden 256, sequence 64, batch 8). fxtrt's file has fewer
nodes but ran 1.10-1.13x slower. The ORT profiler, per op type, showed:

- ``gelu``: torch.onnx's GELU, in an operand order ORT's GeluFusion does not match (5 kernels, not 1).
- ``key_transpose``: attention's key transposed twice through a 3-D view, where once does.
- ``residual_sum``: residual Add + LayerNormalization, which ORT fuses into its SkipLayerNormalization.
  That kernel's CPU float path is 6-7x slower than the two kernels it replaces.

The sweep over the fidelity corpus (``python -m benchmarks.latency``) added two more:

- ``global_average_pool``: spatial ReduceMean, which forces ORT out of its NCHWc conv layout.
- ``squeeze_unit_axis``: a recurrent layer's output moved past a size-1 axis (a copy) and reshaped, not squeezed.

One more was tried and left out. It made linear layers on 3-D inputs one 2-D ``Gemm`` with the bias
(``Reshape``, ``Gemm``, ``Reshape``), as the legacy recipe's onnxsim does, in place of ``MatMul`` +
``Add``. By the profiler it saved about 3% on deit_tiny. Interleaved, it cost 1-6% on the small
hf/bert and dyn/bert, where the two Reshapes per layer weigh more than the bias Add.

Only the main graph is rewritten, not If/Loop/Scan bodies. A site whose shapes cannot be proven
is left as it is (:mod:`.graph`).

Example::

    tuned = tune_for_onnxruntime(model)          # rewrites ``model`` in place
    tuned.rewrites   # {"gelu": 4, "key_transpose": 4, "residual_sum": 8, "global_average_pool": 0, ...}
    tuned.notes      # ["tuned for ONNX Runtime: gelu x4, key_transpose x4, residual_sum x8"]
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import onnx

from fxtrt.backend.onnxruntime.tune.gelu import gelu
from fxtrt.backend.onnxruntime.tune.global_average_pool import global_average_pool
from fxtrt.backend.onnxruntime.tune.graph import TuneGraph
from fxtrt.backend.onnxruntime.tune.key_transpose import key_transpose
from fxtrt.backend.onnxruntime.tune.residual_sum import residual_sum
from fxtrt.backend.onnxruntime.tune.squeeze_unit_axis import squeeze_unit_axis

log = logging.getLogger(__name__)

Rewrite = Callable[[TuneGraph], int]
REWRITES: Mapping[str, Rewrite] = {
    "gelu": gelu, "key_transpose": key_transpose, "residual_sum": residual_sum,
    "global_average_pool": global_average_pool, "squeeze_unit_axis": squeeze_unit_axis,
}


@dataclass
class Tuned:
    """The rewritten model (the one passed in) and how many sites each rewrite changed."""

    model: onnx.ModelProto
    rewrites: dict[str, int] = field(default_factory=dict)

    @property
    def notes(self) -> list[str]:
        done = ", ".join(f"{name} x{n}" for name, n in self.rewrites.items() if n)
        return [f"tuned for ONNX Runtime: {done}"] if done else []


def tune_for_onnxruntime(model: onnx.ModelProto, rewrites: Sequence[str] | None = None) -> Tuned:
    """Apply ``rewrites`` (default: all of :data:`REWRITES`, in that order) to ``model`` in place."""
    names = list(REWRITES) if rewrites is None else list(rewrites)
    unknown = [n for n in names if n not in REWRITES]
    if unknown:
        raise ValueError(f"unknown rewrite(s) {unknown}; known: {', '.join(REWRITES)}")
    g = TuneGraph(model)
    done = {name: REWRITES[name](g) for name in names}
    log.debug("tuned for ONNX Runtime: %s", done)
    return Tuned(model, done)
