"""Write artifacts to a staging directory and move them into place only on success.

A failed compile leaves nothing half-written behind: not in out_dir, not in a temp dir.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType


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
