"""Write artifacts to a staging directory and move them into place only on success.

A failed compile leaves nothing half-written behind: not in out_dir, not in a temp dir, and
not when SIGTERM stops it (:func:`fxtrt.termination.sigterm_raises`). A compile that succeeds
leaves in out_dir exactly its own artifacts: the files an earlier compile listed in its
``report.json`` go, files fxtrt never wrote stay.

Example::

    with ArtifactDir(Path("out")) as stage:
        save_onnx(model, stage.path / "model.onnx")
        report.artifacts = stage.index(onnx_model)   # final paths, under their report keys
    stage.final                                      # Path("out")
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from fxtrt.termination import sigterm_raises

if TYPE_CHECKING:
    from fxtrt.artifacts.base import Artifact

REPORT_FILE = "report.json"

log = logging.getLogger(__name__)


class ArtifactDir:
    """``with ArtifactDir(out_dir) as stage: ...``; files go in ``stage.path``; ``final`` after exit."""

    def __init__(self, out_dir: Path | None) -> None:
        self.out_dir = out_dir
        self.path: Path = Path()
        self.final: Path | None = None
        self._signals = contextlib.ExitStack()

    def __enter__(self) -> "ArtifactDir":
        parent = self.out_dir.parent if self.out_dir else None
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        self._signals.enter_context(sigterm_raises())  # before the directory exists: SIGTERM then cleans it up
        try:
            self.path = Path(tempfile.mkdtemp(prefix=".fxtrt-staging-", dir=parent))
        except BaseException:
            self._signals.close()
            raise
        return self

    def remove_with(self, owner: object) -> None:
        """Without out_dir, the temp directory lives as long as ``owner`` (the CompiledModel that
        serves from it): it is removed when ``owner`` is collected or the interpreter exits."""
        if self.out_dir is None and self.final is not None:
            weakref.finalize(owner, shutil.rmtree, str(self.final), True)

    def final_path(self, name: str) -> Path:
        """Where a staged file will live once committed."""
        return self._target() / name

    def index(self, *artifacts: "Artifact | None") -> dict[str, str]:
        """``report.artifacts``: the final paths of the first artifact's files, the report, then the
        other artifacts' files, each under the keys the artifact gives them (only files that exist)."""
        present = [a for a in artifacts if a is not None]
        out: dict[str, str] = {}
        for i, artifact in enumerate(present):
            out.update({k: str(self.final_path(p.name)) for k, p in artifact.index().items()})
            if i == 0:
                out["report"] = str(self.final_path(REPORT_FILE))
        if not present:
            out["report"] = str(self.final_path(REPORT_FILE))
        return out

    def _target(self) -> Path:
        if self.final is None:
            self.final = self.out_dir or Path(tempfile.mkdtemp(prefix="fxtrt-"))
        return self.final

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        with self._signals:
            self._settle(exc_type is not None)

    def _settle(self, failed: bool) -> None:
        if failed:
            shutil.rmtree(self.path, ignore_errors=True)
            if self.final is not None and self.out_dir is None:
                shutil.rmtree(self.final, ignore_errors=True)
            return
        target = self._target()
        target.mkdir(parents=True, exist_ok=True)
        earlier = earlier_artifacts(target)
        staged = sorted(self.path.iterdir())
        for item in staged:
            dest = target / item.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            os.replace(item, dest)
        self.path.rmdir()
        for name in sorted(earlier - {item.name for item in staged}):
            log.info("removed %s, written by an earlier compile into %s", name, target)
            (target / name).unlink(missing_ok=True)


def earlier_artifacts(directory: Path) -> set[str]:
    """The files an earlier compile wrote to ``directory``: what its ``report.json`` lists under
    "artifacts". That report may be edited or come from elsewhere, so only the names of regular
    files directly inside ``directory`` count: no ``..``, no other directory, no subdirectory, no
    symlink (fxtrt writes none)."""
    try:
        listed = json.loads((directory / REPORT_FILE).read_text()).get("artifacts")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return set()
    if not isinstance(listed, dict):
        return set()
    home = directory.resolve()
    names = set()
    for value in listed.values():
        if not isinstance(value, str) or not value:
            continue
        path = Path(value)
        if ".." in path.parts or (path.parent.resolve() != home if path.is_absolute() else len(path.parts) != 1):
            continue
        file = directory / path.name
        if path.name != REPORT_FILE and file.is_file() and not file.is_symlink():
            names.add(path.name)
    return names
