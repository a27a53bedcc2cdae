"""compile(precision="fp16") on a model built to overflow fp16: large activations into LayerNorm
and Softmax. Real torch / onnx / onnxruntime; fp16 is checked against the fp32 PyTorch model."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto

import fxtrt
from fxtrt.backend.fp16 import convert_to_fp16, repair_fp16
from tests import seed_models as sm

SEED_FILE = str(Path(sm.__file__).resolve())


def line(tag: str) -> str:
    return f"{SEED_FILE}:{sm.line_of(sm.Fp16Overflow, tag)}"


@pytest.fixture(scope="module")
def overflow(tmp_path_factory):
    torch.manual_seed(0)
    model = sm.Fp16Overflow().eval()
    out = tmp_path_factory.mktemp("fp16") / "out"
    return model, fxtrt.compile(model, torch.randn(1, 16), batch=(1, 4, 8), precision="fp16", out_dir=out)


def _feeds_and_reference(model, batches=(1, 4)):
    feeds = [{"x": torch.randn(b, 16).numpy()} for b in batches]
    with torch.no_grad():
        refs = [{"output": model(torch.from_numpy(f["x"])).numpy()} for f in feeds]
    return feeds, refs


def test_plain_fp16_cast_of_the_verified_model_fails(overflow):
    model, compiled = overflow
    fp32 = onnx.load(str(compiled.report.artifacts["onnx_fp32"]))
    feeds, refs = _feeds_and_reference(model)
    plain = repair_fp16(fp32, feeds, refs, fp32_ops=(), max_rounds=0, raise_on_failure=False)
    assert not plain.passed
    (fig,) = plain.rounds[0].outputs
    assert fig.nonfinite > 0  # x*x overflows fp16's 65504 and poisons LayerNorm / Softmax with inf / NaN
    onnx.checker.check_model(convert_to_fp16(fp32, fp32_ops=()))  # the cast itself is valid ONNX


def test_repair_keeps_the_overflowing_node_and_reports_its_source_line(overflow):
    _, compiled = overflow
    stage = compiled.report.stages["fp16"]
    assert stage["passed"] and stage["repaired"] and (stage["atol"], stage["rtol"]) == (1e-2, 1e-2)
    kept = {k["op_type"]: k for k in stage["kept_fp32"]}
    assert set(kept) == {"Mul", "LayerNormalization", "Softmax"}
    square = kept["Mul"]
    assert square["rule"] == "diverged" and square["round"] == 1
    assert square["source"] == line("square") and "beyond fp16" in square["reason"]
    assert kept["LayerNormalization"]["rule"] == kept["Softmax"]["rule"] == "op_type"
    assert kept["LayerNormalization"]["source"] == kept["Softmax"]["source"] == line("norm-softmax")
    # Round 0 (the default conversion) overflows; round 1 keeps the square in fp32 and passes.
    rounds = stage["rounds"]
    assert [r["passed"] for r in rounds] == [False, True]
    assert rounds[0]["outputs"][0]["nonfinite"] > 0 and rounds[0]["added"] == [square["name"]]
    text = compiled.report.to_text()
    assert f"{square['name']} (Mul) [{line('square')}] diverged, round 1" in text


def test_fp16_artifact_types_and_paths(overflow):
    _, compiled = overflow
    out = compiled.onnx_path.parent
    assert compiled.onnx_path == out / "model_fp16.onnx"  # the artifact that matches precision
    assert compiled.report.artifacts["onnx"] == str(out / "model_fp16.onnx")
    assert compiled.report.artifacts["onnx_fp32"] == str(out / "model.onnx")
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model_fp16.onnx", "report.json"]
    half = onnx.load(str(compiled.onnx_path))
    inits = {t.name: t.data_type for t in half.graph.initializer}
    assert TensorProto.FLOAT16 in inits.values(), "the Linear weights are fp16"
    io = [vi.type.tensor_type.elem_type for vi in (*half.graph.input, *half.graph.output)]
    assert io == [TensorProto.FLOAT, TensorProto.FLOAT], "inputs and outputs stay fp32 by default"
    assert half.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert json.loads((out / "report.json").read_text())["stages"]["fp16"]["kept_fp32"][0]["source"] == line("square")


def test_fp16_is_verified_against_the_fp32_torch_model_at_fp16_tolerances(overflow):
    model, compiled = overflow
    rows = [r for r in compiled.report.verification if r.note.startswith("fp16")]
    assert [r.sizes["batch"] for r in rows] == [1, 3, 4, 8] and all(r.passed for r in rows)
    assert all(r.max_abs < 1e-2 for r in rows)
    x = torch.randn(5, 16)
    with torch.no_grad():
        want = model(x)
    torch.testing.assert_close(compiled(x), want, atol=1e-2, rtol=1e-2)


def test_fp16_that_cannot_pass_is_a_precision_error_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(fxtrt.PrecisionError) as info:
        fxtrt.compile(sm.Fp16Overflow().eval(), torch.randn(1, 16), batch=(1, 2, 4), precision="fp16",
                      fp16_atol=0.0, fp16_rtol=0.0, out_dir=out)
    # No tolerance at all: even the fp32 ONNX model differs from PyTorch in the last bits.
    assert "does not match the reference" in str(info.value) and info.value.rows
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fxtrt")]


@pytest.mark.parametrize("kwargs, message", [
    (dict(precision="int8"), "precision='int8' is not supported"),
    (dict(precision="fp16", fp16_atol=-1), "fp16_atol must be a non-negative number"),
    (dict(precision="fp16", fp16_rtol="0.1"), "fp16_rtol must be a non-negative number"),
])
def test_bad_precision_arguments(kwargs, message):
    with pytest.raises(fxtrt.ConfigError, match=message):
        fxtrt.compile(torch.nn.Linear(3, 2), torch.randn(1, 3), **kwargs)
