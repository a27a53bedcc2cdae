"""Write artifacts to a staging directory and move them into place only on success.

A failed compile leaves nothing half-written behind: not in out_dir, not in a temp dir.

Example::

    with ArtifactDir(Path("out")) as stage:
        save_onnx(model, stage.path / "model.onnx")
        report.artifacts = stage.index(onnx_model)   # final paths, under their report keys
    stage.final                                      # Path("out")
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from fxtrt.artifacts.onnx_model import MODEL_FILE

if TYPE_CHECKING:
    from fxtrt.artifacts.base import Artifact

REPORT_FILE = "report.json"


class ArtifactDir:
    """``with ArtifactDir(out_dir) as stage: ...``; files go in ``stage.path``; ``final`` after exit."""

    def __init__(self, out_dir: Path | None) -> None:
        self.out_dir = out_dir
        self.path: Path = Path()
        self.final: Path | None = None

    def __enter__(self) -> "ArtifactDir":
        parent = self.out_dir.parent if self.out_dir else None
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=".fxtrt-staging-", dir=parent))
        return self

    def final_path(self, name: str) -> Path:
        """Where a staged file will live once committed."""
        return self._target() / name

    def index(self, *artifacts: "Artifact | None") -> dict[str, str]:
        """``report.artifacts``: the final paths of the first artifact's files, the report, the
        external weight files, then the other artifacts' files (only files that exist)."""
        present = [a for a in artifacts if a is not None]
        out = {k: str(self.final_path(p.name)) for k, p in present[0].index().items()} if present else {}
        out["report"] = str(self.final_path(REPORT_FILE))
        if (self.path / (MODEL_FILE + ".data")).exists():
            out["external_data"] = str(self.final_path(MODEL_FILE + ".data"))
        for name in sorted(p.name for p in self.path.glob("*.onnx.data") if p.name != MODEL_FILE + ".data"):
            out[f"external_data:{name[:-5]}"] = str(self.final_path(name))
        for artifact in present[1:]:
            out.update({k: str(self.final_path(p.name)) for k, p in artifact.index().items()})
        return out

    def _target(self) -> Path:
        if self.final is None:
            self.final = self.out_dir or Path(tempfile.mkdtemp(prefix="fxtrt-"))
        return self.final

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            if self.final is not None and self.out_dir is None:
                shutil.rmtree(self.final, ignore_errors=True)
            return
        target = self._target()
        target.mkdir(parents=True, exist_ok=True)
        for item in sorted(self.path.iterdir()):
            dest = target / item.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            os.replace(item, dest)
        self.path.rmdir()
