"""fp16 by ONNX types, with automatic repair of the nodes fp16 breaks.

TensorRT 11 (and 10 with strongly typed networks) computes in the types the ONNX graph
declares, so reduced precision is a graph rewrite: float tensors become float16, except the
nodes kept in float32, with ``Cast`` nodes at the boundaries.

Why not ``onnxconverter_common.float16.convert_float_to_float16``: with onnx 1.23 and opset 18
(1.16.0, checked) it produces models onnxruntime rejects or that silently differ:

* a ``Cast(to=FLOAT)`` (``mask.float()``) keeps producing float32 while its output is declared
  float16, so the model fails to load;
* an initializer read by both a blocked and an unblocked node stays float32 for both, a type
  error in the unblocked one;
* a blocked node that produces a graph output, with ``keep_io_types=True``, makes that output
  float16 (the opposite of what was asked, and its values are rounded);
* constants are clamped to +-1e4 by default (an attention mask of -1e9 becomes -1e4).

So the conversion here is our own, written as a plan (which node computes in which
precision) and a materialisation of that plan. Numerically sensitive ops stay float32 by
default (:data:`DEFAULT_FP32_OPS`), as do nodes with a constant operand fp16 cannot hold
(an epsilon below fp16's smallest normal number, a value beyond 65504) and slots whose ONNX
schema has no float16 type.

Verifying fp16 on onnxruntime's CPU provider needs care: ORT runs most fp16 nodes through
float32 kernels and removes the casts between them, so an fp16 overflow in an intermediate
tensor never shows (``x*x/x`` at x=1000 gives 1000, not inf). :func:`repair_fp16` therefore
checks an *emulation* of the plan: the same graph computed in float32 with every value the
real model stores in fp16 rounded through an explicit ``Cast(fp16) -> Cast(fp32)`` pair,
which ORT keeps. That is fp16 storage with float32 arithmetic inside each node, which is what
TensorRT does for the elementwise ops where fp16 overflows; matmul/conv accumulation order is
not modelled. The real fp16 model must then also pass on ORT.

The package follows the seams: :mod:`.plan` (which node computes in which precision, and why),
:mod:`.materialize` (the fp16 model and its float32 emulation), :mod:`.repair` (the loop that
keeps nodes in float32 until the outputs match) and :mod:`.figures` (running and comparing).

Example::

    result = repair_fp16(model, feeds=[{"x": x1}, {"x": x8}], reference=[{"y": y1}, {"y": y8}])
    onnx.save(result.model, "model_fp16.onnx")
    kept = [(k.name, k.op_type, k.reason) for k in result.kept]   # nodes that stay float32, and why
"""
from fxtrt.backend.fp16.figures import OutputFigures
from fxtrt.backend.fp16.materialize import convert_to_fp16, materialize
from fxtrt.backend.fp16.plan import DEFAULT_FP32_OPS, FP16_MAX, FP16_MIN_NORMAL, Fp16Graph, KeptNode
from fxtrt.backend.fp16.repair import Fp16Result, RoundFigures, repair_fp16

__all__ = [
    "DEFAULT_FP32_OPS", "FP16_MAX", "FP16_MIN_NORMAL", "Fp16Graph", "Fp16Result", "KeptNode", "OutputFigures",
    "RoundFigures", "convert_to_fp16", "materialize", "repair_fp16",
]
