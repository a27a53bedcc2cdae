"""The staging directory: files move into out_dir only when the run succeeds, and the report's
artifact index names their final paths."""
from __future__ import annotations

from pathlib import Path

import pytest

from fxtrt.artifacts import ArtifactDir, OnnxModel
from tests.artifacts.conftest import FP32


def test_a_failed_run_leaves_nothing_behind(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), ArtifactDir(out) as stage:
        (stage.path / "model.onnx").write_bytes(b"half-written")
        raise RuntimeError("a stage failed")
    assert list(tmp_path.iterdir()) == []


def test_the_index_names_final_paths_and_only_files_that_exist(tmp_path: Path) -> None:
    """Each artifact names its own files, its external weights included; staging knows no file name,
    so a file no artifact owns (a stray ``.onnx.data``) is not listed."""
    out = tmp_path / "out"
    with ArtifactDir(out) as stage:
        for name in ("model.onnx", "model.onnx.data", "stray.onnx.data"):
            (stage.path / name).write_bytes(b"x")
        index = stage.index(OnnxModel(stage.path / "model.onnx", ["x"], ["y"], tolerance=FP32), None)
        assert stage.path.parent == tmp_path and stage.path != out
    assert index == {"onnx": str(out / "model.onnx"), "external_data": str(out / "model.onnx.data"),
                     "report": str(out / "report.json")}
    assert stage.final == out and sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.onnx.data",
                                                                           "stray.onnx.data"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "the staging directory is gone"
