"""torch.onnx's ONNX optimizer without its general pattern rewriter, which onnxsim redoes.

``ONNXProgram.optimize()`` runs onnxscript's ``optimize_ir``: constant folding, about forty
pattern-rewrite rules, unused-node removal, constant lifting, deduplication and CSE. fxtrt
cleans the result with onnxsim afterwards (:mod:`.cleanup`), which eliminates the same no-ops
and collapses the same slices and reshapes. Measured on twelve fidelity-benchmark models (resnet50,
mobilenet_v3, efficientnet_b0, convnext, inception_v3, swin, levit, yolov8n, bert, gpt2,
wav2vec2, an LSTM), the cleaned graphs differ only where a BatchNormalization follows a Conv or
Gemm: onnxsim gets those Conv weights as typed inputs (:func:`.cleanup._foldable_weights`) and
cannot fuse them. So the rewriter runs only the BatchNorm fusions, and compile took 1-33% less
on those models (the least of two runs each; bert 1.2 s, vit 0.9 s of rewriting).

Before::                                   After (onnxsim then folds the no-ops)::

    Conv(x, W) -> BatchNormalization -> y      Conv(x, W', b') -> y
    Mul(y, 1) -> Reshape(shape_of_const)       Mul(y, 1) -> Reshape(shape_of_const)

Models whose weights pass protobuf's 2 GB never reach onnxsim (GraphSurgeon folds them), so
they get every rule (``every_rule=True``), as before. Both of fxtrt's translation paths (private
and public, :mod:`.translate`) call :func:`optimize`, so they give the same bytes.
"""
from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript.optimizer import fold_constants_ir, optimize_ir
from onnxscript.rewriter import RewritePass
from onnxscript.rewriter.rules.common import (
    fuse_batchnorm_into_conv_rule,
    fuse_batchnorm_into_conv_transpose_rule,
    fuse_batchnorm_into_gemm_rule,
)

_BATCHNORM_RULES = (fuse_batchnorm_into_conv_rule, fuse_batchnorm_into_conv_transpose_rule,
                    fuse_batchnorm_into_gemm_rule)


class _FoldConstants(ir.passes.InPlacePass):
    """onnxscript's constant folding with torch.onnx's settings (its defaults, shape inference on)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, bool(fold_constants_ir(model).modified))


def optimize(model: ir.Model, *, every_rule: bool = False) -> ir.Model:
    """Optimise ``model`` in place as ``ONNXProgram.optimize()`` does, with only the BatchNorm
    fusions of its rewriter unless ``every_rule`` (see the module docstring); returns it."""
    if every_rule:
        optimize_ir(model)
        return model
    passes = ir.passes.Sequential(
        common.InlinePass(),
        ir.passes.PassManager(
            [_FoldConstants(), RewritePass(_BATCHNORM_RULES), common.RemoveUnusedNodesPass(),
             common.RemoveUnusedFunctionsPass(), common.RemoveUnusedOpsetsPass()],
            steps=2, early_stop=True,
        ),
        common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.LiftSubgraphInitializersToMainGraphPass(),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.OutputFixPass(),
        common.NameFixPass(),
    )
    passes(model)
    return model
