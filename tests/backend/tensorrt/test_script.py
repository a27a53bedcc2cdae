"""build_engines.sh: written, run where trtexec is missing, and read back by our parser and Polygraphy's."""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fxtrt.backend.tensorrt import (
    BUILD_SCRIPT_NAME,
    parse_build_script,
    plan_buckets,
    plan_engines,
    write_build_script,
)
from tests.backend.tensorrt.conftest import IMG_SPECS, SEQ_RANGES, SEQ_SPECS, shapes_of, static_onnx


def test_build_script_round_trips_every_engine_with_both_tools(seq_onnx: Path) -> None:
    out_dir = seq_onnx.parent
    plan = plan_engines(seq_onnx, SEQ_SPECS, SEQ_RANGES)
    script = write_build_script(plan, out_dir)
    assert script == out_dir / BUILD_SCRIPT_NAME
    assert script.stat().st_mode & stat.S_IXUSR
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text
    assert "model_T1000.engine  batch 1..32 (opt 8), T = 1000" in text  # comments say what is built
    assert "--fp16" not in text and "--stronglyTyped" in text and "--strongly-typed" in text
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")], "no temp file left behind"
    subprocess.run(["bash", "-n", str(script)], check=True)

    commands = parse_build_script(script)
    assert len(commands) == 2 * len(plan.engines)
    for spec in plan.engines:
        mine = [c for c in commands if c.engine == spec.engine_name]
        assert sorted(c.tool for c in mine) == ["polygraphy", "trtexec"]
        for c in mine:
            assert c.onnx == "model.onnx"  # relative to the script, so out_dir can be copied
            assert c.min == shapes_of(spec, "min")
            assert c.opt == shapes_of(spec, "opt")
            assert c.max == shapes_of(spec, "max")


def test_script_stops_before_building_when_the_tool_is_missing(img_onnx: Path) -> None:
    """Run for real here, where there is no trtexec: a clear message, exit 127, no engine file."""
    script = write_build_script(plan_engines(img_onnx, IMG_SPECS, {"batch": (1, 8, 32)}), img_onnx.parent)
    env = {"PATH": "/usr/bin:/bin", "TRTEXEC": "trtexec-not-installed"}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, cwd="/")
    assert done.returncode == 127 and "trtexec-not-installed not found" in done.stderr
    assert not list(img_onnx.parent.glob("*.engine*"))
    bad = subprocess.run(["bash", str(script)], env={**env, "FXTRT_BUILDER": "onnx"}, capture_output=True, text=True)
    assert bad.returncode == 2 and "must be trtexec or polygraphy" in bad.stderr


def test_file_names_with_spaces_are_quoted(tmp_path: Path) -> None:
    path = static_onnx(tmp_path / "my net $1.onnx", 2)
    script = write_build_script(plan_buckets({2: path}, IMG_SPECS), tmp_path)
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert [(c.onnx, c.engine) for c in parse_build_script(script)] == [("my net $1.onnx", "my net $1_b2.engine")] * 2


def test_static_engines_get_no_shape_flags(tmp_path: Path) -> None:
    paths = {b: static_onnx(tmp_path / f"net_b{b}.onnx", b) for b in (1, 8)}
    script = write_build_script(plan_buckets(paths, IMG_SPECS), tmp_path)
    commands = parse_build_script(script)
    assert [(c.tool, c.onnx, c.engine) for c in commands] == [
        ("trtexec", "net_b1.onnx", "net_b1.engine"), ("polygraphy", "net_b1.onnx", "net_b1.engine"),
        ("trtexec", "net_b8.onnx", "net_b8.engine"), ("polygraphy", "net_b8.onnx", "net_b8.engine")]
    for c in commands:
        assert c.min == c.opt == c.max == {}
        assert not any("Shapes" in a or "-shapes" in a for a in c.argv)


def test_polygraphy_cli_reads_the_commands_as_the_plan_says(seq_onnx: Path) -> None:
    """Polygraphy's own parser turns the script's command into loaders: same profiles, strongly typed."""
    out_dir = seq_onnx.parent
    plan = plan_engines(seq_onnx, SEQ_SPECS, SEQ_RANGES, split={"T": [1000]})
    commands = parse_build_script(write_build_script(plan, out_dir))
    (poly,) = [c for c in commands if c.tool == "polygraphy"]
    generated = out_dir / "gen.py"
    subprocess.run(
        [str(Path(sys.executable).with_name("polygraphy")), *poly.argv, "--gen-script", str(generated)],
        cwd=out_dir, check=True, capture_output=True,
    )
    code = generated.read_text()
    spec = plan.engines[0]
    profile = "Profile()" + "".join(
        f".add('{p.name}', min={list(p.min)}, opt={list(p.opt)}, max={list(p.max)})" for p in spec.inputs)
    assert profile in code
    network = re.search(r"NetworkFromOnnxPath\('([^']+)', strongly_typed=True", code)
    assert network and Path(network.group(1)) == seq_onnx  # Polygraphy resolves it against the script's dir
    assert "load_timing_cache='timing.cache'" in code and "save_timing_cache='timing.cache'" in code
    assert "path='model_T1000.engine.partial'" in code
    assert "OnnxrtRunner" in code and "TrtRunner" in code
    assert "fp16" not in code


def test_out_dir_can_be_copied_elsewhere(seq_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    plan = plan_engines(seq_onnx, SEQ_SPECS, SEQ_RANGES)
    write_build_script(plan, seq_onnx.parent)
    copy = tmp_path_factory.mktemp("gpu-machine") / "artifacts"
    shutil.copytree(seq_onnx.parent, copy)
    for c in parse_build_script(copy / BUILD_SCRIPT_NAME):
        assert (copy / c.onnx).is_file()
        assert not os.path.isabs(c.engine) and "/" not in c.engine
