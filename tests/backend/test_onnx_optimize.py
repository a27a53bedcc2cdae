"""fxtrt's ONNX optimizer (torch.onnx's without the general rewriter) loses nothing after cleanup.

The claim of :mod:`fxtrt.backend.onnx_optimize`: once onnxsim has cleaned the graph, it is the
graph torch.onnx's full optimizer would have given, op for op, on packaged models; and the Conv +
BatchNorm fusion onnxsim cannot do (its Conv weights come in as inputs) still happens.
"""
from __future__ import annotations

import pytest
import torch
import torchvision

from fxtrt.backend.cleanup import cleanup, op_counts
from fxtrt.backend.recurrent import TRANSLATIONS
from fxtrt.backend.translate import translate
from tests.backend.test_translate import QUICK, emitted_program


def _cleaned_ops(ep, names, full_rewriter: bool) -> dict[str, int]:
    if full_rewriter:  # torch.onnx's own optimizer, every rewrite rule
        proto = torch.onnx.export(ep, (), dynamo=True, opset_version=18, input_names=names[0], output_names=names[1],
                                  optimize=True, verbose=False, custom_translation_table=dict(TRANSLATIONS)).model_proto
    else:
        proto = translate(ep, opset=18, input_names=names[0], output_names=names[1], custom=TRANSLATIONS,
                          extra_decompositions={})
    return op_counts(cleanup(proto).model)


def _resnet18_program():
    model = torchvision.models.resnet18(weights=None).eval()  # never called before
    batch = torch.export.Dim("batch", min=1, max=32)
    return torch.export.export(model, (torch.randn(2, 3, 64, 64),), dynamic_shapes=({0: batch},))


@pytest.mark.parametrize("name", ["tv/resnet18", "tv/squeezenet1_1", "hf/bert"])
def test_the_cleaned_graph_is_the_one_the_full_optimizer_gives(name):
    if name == "tv/resnet18":
        ep, names = _resnet18_program(), (["x"], ["y"])
    else:
        ep, captured = emitted_program(next(s for s in QUICK if s.name == name))
        names = (list(captured.input_names), list(captured.output_names))
    ours = _cleaned_ops(ep, names, full_rewriter=False)
    assert ours == _cleaned_ops(ep, names, full_rewriter=True)
    if name == "tv/resnet18":
        assert "BatchNormalization" not in ours and ours["Conv"] == 20, "every BatchNorm is fused into its Conv"


def test_every_rule_is_torch_onnx_s_own_optimizer():
    """A model past protobuf's 2 GB skips onnxsim, so it gets every rewrite rule: ``x * 1`` goes
    in the rewriter (onnxsim removes it otherwise)."""
    import onnx_ir as ir

    from fxtrt.backend.onnx_optimize import optimize

    class Times1(torch.nn.Module):
        def forward(self, x):
            return torch.relu(x) * 1.0

    ep = torch.export.export(Times1(), (torch.randn(2, 3),))

    def ops(every_rule: bool) -> set[str]:
        program = torch.onnx.export(ep, (), dynamo=True, opset_version=18, optimize=False, verbose=False)
        model = optimize(program.model, every_rule=every_rule)
        return {n.op_type for n in ir.to_proto(model).graph.node}

    assert "Mul" in ops(False) and "Mul" not in ops(True)
