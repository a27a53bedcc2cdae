"""Issue 16, "the promise at the edges": what a compile leaves on disk, how it stops, and how the
command explains itself.

Every test here failed on the code before its fix (commit 371e385), except the two marked as
guards, which keep the fixes from going too far (files fxtrt never wrote; the command's own
artifacts without --out).
"""
from __future__ import annotations

import gc
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

import fxtrt
from fxtrt.artifacts import ArtifactDir
from fxtrt.cli import build_parser
from fxtrt.zoo import load_model
from fxtrt.settings import DEFAULT_BATCH, Settings

SIGNAL_TIMEOUT = 60  # seconds; each signal test takes well under 30 on two cores


def _mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()


class ValueDependent(torch.nn.Module):
    """Branches on a tensor's value: capture fails, so the compile fails."""

    def forward(self, x):
        return x * 2 if x.sum().item() > 0 else x


def _env(tmp: Path) -> dict[str, str]:
    """The environment of a child ``fxtrt``: this fxtrt first on the path, its temp dir ``tmp``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(fxtrt.__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    env["TMPDIR"] = str(tmp)
    return env


def _fxtrt(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fxtrt", *args], capture_output=True, text=True, env=_env(tmp),
                          timeout=300)


def _ours(directory: Path) -> list[str]:
    """What fxtrt left in ``directory``: its temp and staging dirs (other tools may write there too)."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(("fxtrt-", ".fxtrt-")))


def _listing(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


# 4. Stale files ----------------------------------------------------------------------------------

def test_stale_files_of_an_earlier_compile_are_removed_only_when_the_new_one_succeeds(tmp_path: Path) -> None:
    out = tmp_path / "out"
    fxtrt.compile(_mlp(), torch.randn(1, 4), buckets=(1, 2), target="tensorrt", out_dir=out)
    (out / "notes.txt").write_text("mine")
    buckets = _listing(out)
    assert {"model_b1.onnx", "model_b2.onnx", "build_engines.sh"} <= set(buckets)

    with pytest.raises(fxtrt.FxtrtError):
        fxtrt.compile(ValueDependent(), torch.randn(1, 4), batch=(1, 2, 4), out_dir=out)
    assert _listing(out) == buckets, "a failed compile leaves the earlier compile as it was"

    compiled = fxtrt.compile(_mlp(), torch.randn(1, 4), batch=(1, 2, 4), out_dir=out)
    ours = {Path(p).name for p in compiled.report.artifacts.values()}
    assert sorted(p.name for p in out.iterdir()) == sorted(ours | {"notes.txt"}), \
        "out_dir holds this compile's artifacts, and the file fxtrt never wrote"
    assert not (out / "build_engines.sh").exists(), "no script that builds engines for the old models"
    assert (out / "notes.txt").read_text() == "mine"


def test_a_forged_report_removes_only_plain_files_directly_inside_out_dir(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir(), elsewhere.mkdir()
    for f in (elsewhere / "victim.onnx", tmp_path / "outside.onnx", out / "stale.onnx", out / "stale_b1.onnx"):
        f.write_text("x")
    (out / "sub").mkdir()
    (out / "sub" / "inner.onnx").write_text("x")
    (out / "link.onnx").symlink_to(elsewhere / "victim.onnx")
    (out / "dirlink").symlink_to(elsewhere, target_is_directory=True)

    def commit(report: str) -> None:
        (out / "report.json").write_text(report)
        with ArtifactDir(out) as stage:
            (stage.path / "model.onnx").write_text("new")
            (stage.path / "report.json").write_text(json.dumps({"artifacts": {"onnx": str(out / "model.onnx")}}))

    for garbage in ("not json", '["stale.onnx"]', '{"artifacts": ["stale.onnx"]}', '{"artifacts": {"a": 1}}'):
        commit(garbage)
        assert (out / "stale.onnx").exists(), f"a report.json reading {garbage!r} removes nothing"

    hostile = [str(elsewhere / "victim.onnx"), "../outside.onnx", str(out / ".." / "outside.onnx"),
               str(tmp_path / "outside.onnx"), "sub/inner.onnx", str(out / "sub" / "inner.onnx"), str(out / "sub"),
               str(out / "link.onnx"), str(out / "dirlink" / "victim.onnx"), "dirlink", str(out), "", ".", "/"]
    commit(json.dumps({"artifacts": {**{f"h{i}": p for i, p in enumerate(hostile)},
                                     "onnx": str(out / "stale.onnx"), "onnx_b1": "stale_b1.onnx"}}))
    assert not (out / "stale.onnx").exists() and not (out / "stale_b1.onnx").exists(), "listed files inside out_dir go"
    assert (elsewhere / "victim.onnx").read_text() == "x" and (tmp_path / "outside.onnx").read_text() == "x"
    assert (out / "sub" / "inner.onnx").exists() and (out / "link.onnx").is_symlink() and (out / "dirlink").is_symlink()
    assert (out / "model.onnx").read_text() == "new"


# 5. Signals --------------------------------------------------------------------------------------

def _stop_during_compile(tmp_path: Path, command: list[str], sig: int) -> subprocess.CompletedProcess:
    """Start ``command``, send ``sig`` once its staging dir exists, and return how it ended."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp),
                            cwd=tmp_path, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + SIGNAL_TIMEOUT
    while not list(tmp_path.glob(".fxtrt-staging-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the compile ended before the signal: {proc.communicate()}"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=SIGNAL_TIMEOUT)
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


RESNET = ["torchvision:resnet18", "--input", "1x3x32x32", "--batch", "1:2:4"]


def _one_line(stderr: str) -> list[str]:
    """stderr without the progress log of the stages that ran before the signal."""
    return [line for line in stderr.splitlines() if line.strip() and not re.match(r"fxtrt: \[\d+/\d+\]", line)]


@pytest.mark.parametrize("sig, status, word", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")])
def test_a_signal_during_fxtrt_compile_leaves_nothing_and_says_so_in_one_line(tmp_path: Path, sig: int,
                                                                               status: int, word: str) -> None:
    proc = _stop_during_compile(tmp_path, [sys.executable, "-m", "fxtrt", "compile", *RESNET,
                                           "--out", str(tmp_path / "out")], sig)
    assert proc.returncode == status, proc.stderr
    lines = _one_line(proc.stderr)
    assert len(lines) == 1 and word in lines[0] and lines[0].startswith("fxtrt: "), proc.stderr
    assert _ours(tmp_path) == [] and _ours(tmp_path / "tmp") == [] and not (tmp_path / "out").exists()


def test_sigterm_during_a_script_that_calls_compile_leaves_nothing(tmp_path: Path) -> None:
    script = ("import torch, torchvision, fxtrt\n"
              "fxtrt.compile(torchvision.models.resnet18().eval(), torch.randn(1, 3, 32, 32), batch=(1, 2, 4), "
              "out_dir='out')\n")
    proc = _stop_during_compile(tmp_path, [sys.executable, "-c", script], signal.SIGTERM)
    assert proc.returncode == 143 and "Traceback" not in proc.stderr, proc.stderr
    assert _ours(tmp_path) == [] and _ours(tmp_path / "tmp") == [] and not (tmp_path / "out").exists()


# 8. Smaller things: temp dirs, --version, help and defaults --------------------------------------

def test_a_compile_without_out_dir_removes_its_temp_dir_with_the_model(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    handler = signal.getsignal(signal.SIGTERM)
    compiled = fxtrt.compile(_mlp(), torch.randn(1, 4), batch=(1, 2, 4))
    assert signal.getsignal(signal.SIGTERM) == handler, "compile leaves the SIGTERM handler as it found it"
    home = compiled.onnx_path.parent
    assert home.parent == tmp_path and home.name.startswith("fxtrt-")
    gc.collect()
    assert compiled(torch.randn(3, 4)).shape == (3, 2), "the files are there while the model lives"
    del compiled
    gc.collect()
    assert not home.exists() and _ours(tmp_path) == []


def test_a_compile_without_out_dir_removes_its_temp_dir_at_interpreter_exit(tmp_path: Path) -> None:
    script = ("import torch, fxtrt\n"
              "m = fxtrt.compile(torch.nn.Linear(4, 2), torch.randn(1, 4), batch=(1, 2, 4))\n"
              "assert m.onnx_path.exists()\n"
              "print(m.onnx_path.parent)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(tmp_path),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).parent == tmp_path
    assert not Path(proc.stdout.strip()).exists() and _ours(tmp_path) == [], "nothing left in the temp dir"


def test_guard_fxtrt_compile_without_out_keeps_the_artifacts_it_names(tmp_path: Path) -> None:
    """Guard (passed before too): the command's temp dir is what it reports, so it stays."""
    proc = _fxtrt("compile", "torchvision:resnet18", "--input", "1x3x32x32", "--batch", "1:2:4", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    where = Path(re.search(r"artifacts written to (\S+)", proc.stdout).group(1))
    assert where.parent == tmp_path and (where / "model.onnx").is_file() and (where / "report.json").is_file()


def test_fxtrt_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"fxtrt {fxtrt.__version__}"


def _options_help(command: str) -> dict[str, str]:
    """``fxtrt COMMAND --help``: each option's help text, as one line, by its first option string."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a.choices, dict)).choices[command]
    entries: dict[str, str] = {}
    current = None
    for line in sub.format_help().splitlines():
        if re.match(r"^  -", line):
            current = line.split()[0].rstrip(",")
            entries[current] = line
        elif current is not None and line.startswith("   "):
            entries[current] += " " + line
        else:
            current = None
    return {k: " ".join(v.split()) for k, v in entries.items()}


@pytest.mark.parametrize("command", ["compile", "explain"])
def test_every_option_has_help_that_states_its_default(command: str) -> None:
    helps = _options_help(command)
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a.choices, dict)).choices[command]
    options = [a for a in sub._actions if a.option_strings and a.dest != "help"]
    assert len(helps) == len(options) + 1, "every option is in --help"
    for action in options:
        text = helps[action.option_strings[0]]
        if action.required:
            assert "(required)" in text, text
        elif action.default not in (None, [], False):
            assert f"(default: {action.default})" in text, text
        else:
            assert "default:" in text, text


def test_cli_defaults_are_the_settings_defaults() -> None:
    """Defaults are written once, in Settings; the command reads them from there."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a.choices, dict)).choices
    args = sub["compile"].parse_args(["m:f", "--input", "1x4"])
    defaults = {f.name: f.default for f in Settings.__dataclass_fields__.values()}
    for name in ("opset", "atol", "rtol", "target", "precision", "keep_dynamic", "fp16_atol", "fp16_rtol"):
        assert getattr(args, name) == defaults[name], name
    assert args.batch is None and sub["explain"].parse_args(["m:f", "--input", "1x4"]).batch is None  # not given
    assert f"(default: {':'.join(map(str, DEFAULT_BATCH))})" in _options_help("compile")["--batch"]
    helps = _options_help("compile")
    assert "(default: 0.0001)" in helps["--atol"] and f"(default: {defaults['opset']})" in helps["--opset"]


# 6. Errors outside the hierarchy (the command's part) ---------------------------------------------

def test_a_file_spec_with_a_syntax_error_is_a_config_error_at_its_line(tmp_path: Path) -> None:
    spec = tmp_path / "broken.py"
    spec.write_text("import torch\n\ndef model(:\n    return torch.nn.Linear(4, 2)\n")
    with pytest.raises(fxtrt.ConfigError) as error:
        load_model(f"{spec}:model")
    assert error.value.source == f"{spec.resolve()}:3"
    proc = _fxtrt("compile", f"{spec}:model", "--input", "1x4", tmp=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("fxtrt: error: "), proc.stderr
    assert "Traceback" not in proc.stderr and "broken.py:3" in proc.stderr


def test_a_factory_that_raises_is_a_config_error_at_its_line(tmp_path: Path) -> None:
    spec = tmp_path / "factory.py"
    spec.write_text("import torch\n\ndef model():\n    size = 4\n    raise ValueError('no weights')\n")
    with pytest.raises(fxtrt.ConfigError) as error:
        load_model(f"{spec}:model")
    assert error.value.source == f"{spec.resolve()}:5" and "ValueError: no weights" in error.value.message
    proc = _fxtrt("compile", f"{spec}:model", "--input", "1x4", tmp=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("fxtrt: error: "), proc.stderr
    assert "Traceback" not in proc.stderr and "factory.py:5" in proc.stderr
