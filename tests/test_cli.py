"""The fxtrt command, run as a user runs it: a subprocess."""
import json
import subprocess
import sys
from pathlib import Path

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
    proc = fxtrt("compile", f"{SEED_FILE}:PerSampleLoop", "--input", "1x8", "--out", str(out))
    assert proc.returncode == 1
    assert f"seed_models.py:{sm.line_of(sm.PerSampleLoop, 'loop')}" in proc.stderr
    assert "GeneralizationError" not in proc.stderr or "structure" in proc.stderr
    assert not out.exists()


def test_bad_arguments_exit_2():
    proc = fxtrt("compile", "torchvision:resnet18", "--input", "1x3xabc")
    assert proc.returncode == 2 and "--input" in proc.stderr


def test_two_inputs_with_batch_dims(tmp_path):
    proc = fxtrt("compile", f"{SEED_FILE}:SeqFirstGRU", "--input", "7x1x16", "--input", "2x1x32",
                 "--batch", "1:2:4", "--batch-dims", "1,1", "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    assert "x: [7, 'batch', 16]" in proc.stdout
