"""Emission of a symbolic capture as captured: the lifted ExportedProgram must survive torch.onnx's
decompositions for graphs as packaged models write them. An op that cannot be emitted is an
EmitError naming the op, the opset that would have it, and the model's line."""
from __future__ import annotations

import inspect

import onnx
import pytest
import torch

import fxtrt
from fxtrt.errors import EmitError


def test_an_output_straight_from_eval_dropout(tmp_path):
    """Decompositions remove the dropout and rename the output (T5's encoder ends this way)."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.1)).eval()
    compiled = fxtrt.compile(model, torch.randn(1, 4), batch=(1, 4, 8), out_dir=tmp_path / "out")
    assert compiled.report.verified
    assert compiled.report.stages["capture"]["one_capture"]


def test_module_names_that_are_not_identifiers(tmp_path):
    """torchvision's RegNet names blocks "block1-0"; a weight's placeholder must still be valid Python."""
    model = torch.nn.Sequential()
    model.add_module("block1-0", torch.nn.Conv2d(3, 4, 3))
    model.add_module("head", torch.nn.Flatten())
    compiled = fxtrt.compile(model.eval(), torch.randn(1, 3, 8, 8), batch=(1, 4, 8), out_dir=tmp_path / "out")
    assert compiled.report.verified
    graph = onnx.load(str(compiled.onnx_path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def _volo():
    """timm's volo_d1_224 at 64x64 (its patch grid stays a multiple of the outlooker's stride): the
    same blocks, the same Col2Im from F.fold, a fraction of the time at 224."""
    import timm

    return timm.create_model("volo_d1_224", pretrained=False, img_size=64).eval(), torch.randn(1, 3, 64, 64)


def _line_of(path: str, text: str) -> int:
    with open(path) as f:
        return next(i for i, line in enumerate(f, 1) if text in line)


def test_an_op_newer_than_the_opset_names_the_lowest_opset_and_the_line(tmp_path):
    import timm.models.volo as volo

    model, x = _volo()
    with pytest.raises(EmitError) as info:
        fxtrt.compile(model, x, batch=(1, 2, 4), opset=17, out_dir=tmp_path / "out")
    err = info.value
    assert err.message == ("Col2Im (from aten.col2im.default) has no ONNX form before opset 18, "
                           "and opset 17 was requested")
    assert err.hint == "compile with opset=18 (fxtrt compile --opset 18)"
    assert err.source == f"{volo.__file__}:{_line_of(volo.__file__, 'F.fold(')}", "the model's F.fold line"
    assert err.node == "node_col2im"


def test_volo_at_opset_18_compiles_and_verifies_in_fp32_and_fp16(tmp_path):
    model, x = _volo()
    compiled = fxtrt.compile(model, x, batch=(1, 2, 4), opset=18, precision="fp16", out_dir=tmp_path / "out")
    assert compiled.report.verified
    rows = compiled.report.verification
    assert {r.sizes["batch"] for r in rows if not r.note} >= {1, 4} and all(r.passed for r in rows)
    assert any(r.note.startswith("fp16") for r in rows), "the fp16 model was verified too"
    for path in (compiled.onnx_path, tmp_path / "out" / "model_fp16.onnx"):
        model_proto = onnx.load(str(path), load_external_data=False)
        assert "Col2Im" in {n.op_type for n in model_proto.graph.node}
        assert next(o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx")) == 18


def test_lowest_opset_comes_from_the_onnx_schemas():
    from fxtrt.backend.opset import lowest_opset

    assert lowest_opset("Col2Im") == 18
    assert lowest_opset("LayerNormalization") == 17
    assert lowest_opset("Relu") == 1
    assert lowest_opset("NoSuchOp") is None


class Zeta(torch.nn.Module):
    def forward(self, x):
        return torch.special.zeta(x, x + 1)  # LINE: zeta


def test_an_op_torch_onnx_cannot_translate_is_named_with_its_line(tmp_path):
    """torch.onnx decomposes special_zeta to prims.zeta and has no translation of that; its error's
    first line says only 'Failed to convert', so the op and the line come from its summary."""
    with pytest.raises(EmitError) as info:
        fxtrt.compile(Zeta(), torch.rand(1, 3) + 1, batch=(1, 2, 4), out_dir=tmp_path / "out")
    err = info.value
    assert err.message.startswith("torch.onnx has no ONNX translation of prims.zeta.default at opset 18")
    lines, start = inspect.getsourcelines(Zeta)
    line = start + next(i for i, text in enumerate(lines) if "# LINE: zeta" in text)
    assert err.source == f"{__file__}:{line}"
    assert "opset" not in (err.hint or ""), "a higher opset would not help, so the hint does not say so"
