"""The fxtrt command, run as a user runs it: a subprocess."""
import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from tests import seed_models as sm

SEED_FILE = str(Path(sm.__file__).resolve())


def fxtrt(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fxtrt", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def test_compile_from_a_file_spec(tmp_path):
    out = tmp_path / "out"
    proc = fxtrt("compile", f"{SEED_FILE}:SizeView", "--input", "1x3x16x16", "--batch", "1:4:8", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "[1/5] capture" in proc.stderr and "[5/5] verify" in proc.stderr, "progress per stage"
    assert f"artifacts written to {out}" in proc.stdout
    assert json.loads((out / "report.json").read_text())["verified"] is True


def test_failure_exits_non_zero_with_the_source_line(tmp_path):
    out = tmp_path / "out"
    proc = fxtrt("compile", f"{SEED_FILE}:ValueDependent", "--input", "1x8", "--input", "1:int64", "--out", str(out))
    assert proc.returncode == 1
    assert f"seed_models.py:{sm.line_of(sm.ValueDependent, 'tolist')}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_bad_arguments_exit_2():
    proc = fxtrt("compile", "torchvision:resnet18", "--input", "1x3xabc")
    assert proc.returncode == 2 and "--input" in proc.stderr


def test_two_inputs_with_batch_dims(tmp_path):
    proc = fxtrt("compile", f"{SEED_FILE}:SeqFirstGRU", "--input", "7x1x16", "--input", "2x1x32",
                 "--batch", "1:2:4", "--batch-dims", "1,1", "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    assert "x: [7, 'batch', 16]" in proc.stdout


def test_tensorrt_target_and_fp16_precision(tmp_path):
    from fxtrt.backend.tensorrt import parse_build_script

    out = tmp_path / "out"
    proc = fxtrt("compile", f"{SEED_FILE}:Fp16Overflow", "--input", "1x16", "--batch", "1:2:4",
                 "--target", "tensorrt", "--precision", "fp16", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "kept in fp32" in proc.stdout and f"seed_models.py:{sm.line_of(sm.Fp16Overflow, 'square')}" in proc.stdout
    assert "engines: skipped" in proc.stdout or "engines: built" in proc.stdout
    assert {c.onnx for c in parse_build_script(out / "build_engines.sh")} == {"model_fp16.onnx"}
    assert f"artifacts written to {out}" in proc.stdout


def test_bad_buckets_exit_2(capsys):
    import pytest

    from fxtrt.cli import build_parser

    proc = fxtrt("compile", f"{SEED_FILE}:SizeView", "--input", "1x3x16x16", "--buckets", "4,1")
    assert proc.returncode == 2 and "buckets must be sorted and unique" in proc.stderr
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["compile", "x:y", "--input", "1x8", "--buckets", "four"])
    assert info.value.code == 2 and "--buckets" in capsys.readouterr().err
    args = build_parser().parse_args(["compile", "x:y", "--input", "1x8", "--buckets", "1,4,8"])
    assert args.buckets == (1, 4, 8) and args.target == "onnx" and args.precision == "fp32"


def test_dynamic_specs_with_names_and_steps():
    import pytest

    from fxtrt.cli import parse_dynamic
    from fxtrt.errors import ConfigError

    assert parse_dynamic(["0:2=320:640:1280:32", "0:3=320:640:1280:32"]) == {
        0: {2: (320, 640, 1280, 32), 3: (320, 640, 1280, 32)}}
    assert parse_dynamic(["1:1=seq:1:128:512"]) == {1: {1: ("seq", 1, 128, 512)}}
    assert parse_dynamic(["0:2=h:320:640:1280:32"]) == {0: {2: ("h", 320, 640, 1280, 32)}}
    for bad in ["0:2=320:640", "0=1:2:3", "0:2=1:2:3:4:5", "0:2"]:
        with pytest.raises(ConfigError, match="INPUT:DIM"):
            parse_dynamic([bad])


def test_a_stepped_dim_from_the_command_line(tmp_path):
    out = tmp_path / "out"
    proc = fxtrt("compile", "torchvision:resnet18", "--input", "1x3x64x64", "--batch", "1:2:3",
                 "--dynamic", "0:2=64:64:128:32", "--dynamic", "0:3=64:64:128:32", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    h, w = [d for d in report["settings"]["dims"] if d["name"] != "batch"]
    assert (h["name"], w["name"]) == ("x_dim2", "x_dim3"), "unnamed dims are independent, named by input and axis"
    assert h["step"] == w["step"] == 32 and h["sites"] == [[0, 2]] and w["sites"] == [[0, 3]]
    for dim in (h, w):
        sizes = {r["sizes"][dim["name"]] for r in report["verification"]}
        assert sizes <= {64, 96, 128} and {64, 128} <= sizes, "verified on the grid only"


def test_named_inputs_compile_a_keyword_model(tmp_path):
    out = tmp_path / "out"
    proc = fxtrt("compile", f"{SEED_FILE}:KeywordEncoder", "--input", "input_ids=1x8:int64",
                 "--input", "attention_mask=1x8:int64", "--batch", "1:4:8",
                 "--dynamic", "input_ids:1=seq:4:8:16", "--dynamic", "attention_mask:1=seq:4:8:16", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["input_names"] == ["input_ids", "attention_mask"]
    assert {d["name"] for d in report["settings"]["dims"]} == {"batch", "seq"}



@pytest.mark.parametrize("spec", ["timm:resnet18", "ultralytics:yolov8n.yaml"])
def test_library_specs_compile_from_the_command_line(tmp_path, spec):
    """timm and ultralytics models by name, no user code: random weights, offline."""
    out = tmp_path / "out"
    proc = fxtrt("compile", spec, "--input", "1x3x64x64", "--batch", "1:4:8", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "report.json").read_text())["verified"] is True


def test_transformers_spec_with_named_inputs(tmp_path):
    out = tmp_path / "out"
    spec = 'transformers:BertModel:{"num_hidden_layers":1,"hidden_size":32,"num_attention_heads":2,"intermediate_size":64}'
    proc = fxtrt("compile", spec, "--input", "input_ids=1x8:int64", "--input", "attention_mask=1x8:int64",
                 "--batch", "1:4:8", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    graph = onnx.load(str(out / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in graph.output] == ["last_hidden_state", "pooler_output"]
