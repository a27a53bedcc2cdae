"""TensorRT's ONNX-parser operator tables, generated from onnx-tensorrt's ``docs/operators.md``.

onnx-tensorrt documents, per release branch, which ONNX ops its parser imports, for which types,
with which restrictions. This module parses that markdown and writes ``trt_operators.json``, the
table fxtrt ships (:func:`load_tables` reads it). The upstream file itself is not shipped: only
what this generator makes of it, with where it came from (repository, ref, commit) and the
sha256 of the text it read.

How the shipped file is known to be the generator's output, without the upstream text: each
table carries a ``digest``, the sha256 of its canonical JSON (:func:`table_digest`), and the
whole file is exactly :func:`render` of what it holds. A hand edit of one entry breaks the digest;
a hand edit that recomputes it still has to match the upstream text wherever the onnx-tensorrt
snapshot is on disk, where the test regenerates the table from git and compares.

Regenerate (the snapshot is a git directory of onnx/onnx-tensorrt)::

    python -m fxtrt.backend.tensorrt.operator_tables --git /path/to/onnx-tensorrt 10=10.1-GA [11=REF]
    python -m fxtrt.backend.tensorrt.operator_tables --file 10 operators.md 10.1-GA <commit>
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from fxtrt.errors import ConfigError

TABLES_FILE = Path(__file__).with_name("trt_operators.json")
UPSTREAM_REPO = "onnx/onnx-tensorrt"
UPSTREAM_PATH = "docs/operators.md"
FORMAT = 1

_HEADER = re.compile(r"TensorRT\s+([0-9.]+)\s+supports operators.*?opset\s+(\d+)\s+to\s+opset\s+(\d+)", re.S)
_HEADER_OLD = re.compile(r"TensorRT\s+([0-9.]+)\s+supports operators up to Opset\s+(\d+)", re.S)
_TYPES_LINE = re.compile(r"TensorRT supports the following ONNX data types:\s*(.+)")
_OP_NAME = re.compile(r"^[A-Z][A-Za-z0-9]*$")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """Where one table's markdown came from."""

    key: str        # "10", "11": the TensorRT major release the table stands for
    text: str
    ref: str
    commit: str
    repo: str = UPSTREAM_REPO
    path: str = UPSTREAM_PATH


def parse_rows(text: str) -> dict[str, dict[str, Any]]:
    """Operator rows of the support matrix: op -> {supported, experimental, types, restrictions}.

    Rows are ``| Op | Y/N | TYPES | RESTRICTIONS |``; upstream leaves trailing cells (and pipes) out.
    """
    rows: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not cells or not _OP_NAME.match(cells[0]) or cells[0] == "Operator" or len(cells) < 2:
            continue
        flag = cells[1]
        if not flag or flag[0] not in "YN":
            continue
        types = [t.strip() for t in cells[2].split(",") if t.strip()] if len(cells) > 2 else []
        if types and not all(re.fullmatch(r"[A-Z][A-Z0-9]*", t) for t in types):
            # a row with a sentence where the types belong ("N | Not supported. ...")
            restrictions, types = " | ".join(cells[2:]).strip(" |"), []
        else:
            restrictions = " | ".join(cells[3:]).strip(" |") if len(cells) > 3 else ""
        rows[cells[0]] = {"supported": flag.startswith("Y"), "experimental": "EXPERIMENTAL" in flag.upper(),
                          "types": types, "restrictions": restrictions}
    if not rows:
        raise ConfigError("no operator rows found: is this onnx-tensorrt's docs/operators.md?")
    return rows


def parse_header(text: str) -> dict[str, Any]:
    """The release the text names, its opset range, its data types and its notes on types."""
    head = text.split("## Operator Support Matrix")[0]
    m = _HEADER.search(head)
    if m:
        release, opset = m.group(1), [int(m.group(2)), int(m.group(3))]
    else:
        old = _HEADER_OLD.search(head)
        if not old:
            raise ConfigError("operators.md has no 'TensorRT X supports operators ... opset' line")
        release, opset = old.group(1), [1, int(old.group(2))]
    types = _TYPES_LINE.search(head)
    data_types = [t.strip() for t in re.split(r",|\band\b", types.group(1)) if t.strip()] if types else []
    notes = [" ".join(line.lstrip("> ").split()) for line in head.splitlines() if line.startswith(">")]
    return {"named_release": release, "opset": opset, "data_types": data_types, "notes": notes}


def table_digest(table: Mapping[str, Any]) -> str:
    """sha256 of a table's canonical JSON, without its own ``digest``."""
    body = {k: v for k, v in table.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def make_table(source: Source) -> dict[str, Any]:
    """One release's table: provenance, header facts and rows, with its digest."""
    table: dict[str, Any] = {
        "repo": source.repo, "path": source.path, "ref": source.ref, "commit": source.commit,
        "source_sha256": hashlib.sha256(source.text.encode()).hexdigest(),
        **parse_header(source.text),
        "operators": parse_rows(source.text),
    }
    table["digest"] = table_digest(table)
    return table


def render(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """The shipped file's exact text for ``tables`` (key -> table): sorted keys, two-space indent."""
    doc = {"format": FORMAT, "generator": "python -m fxtrt.backend.tensorrt.operator_tables",
           "tables": {k: tables[k] for k in sorted(tables)}}
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def generate(sources: Sequence[Source]) -> str:
    """The shipped file's text for these sources."""
    keys = [s.key for s in sources]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"each release key once, got {keys}")
    return render({s.key: make_table(s) for s in sources})


def from_git(git_dir: Path, key: str, ref: str) -> Source:
    """``docs/operators.md`` at ``ref`` of an onnx-tensorrt git directory (read only)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(git_dir), *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise ConfigError(f"git {' '.join(args)} in {git_dir} failed: {done.stderr.strip()}")
        return done.stdout
    commit = git("rev-parse", f"{ref}^{{commit}}").strip()
    return Source(key, git("show", f"{commit}:{UPSTREAM_PATH}"), ref, commit)


def load_tables(path: Path = TABLES_FILE) -> dict[str, dict[str, Any]]:
    """The shipped tables, key ("10", "11") -> table."""
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != FORMAT:
        raise ConfigError(f"{path} has format {doc.get('format')!r}, this fxtrt reads {FORMAT}",
                          hint="regenerate it with python -m fxtrt.backend.tensorrt.operator_tables")
    return doc["tables"]


def generator_mismatches(text: str) -> list[str]:
    """Why ``text`` is not what this generator writes: each table's digest against its content,
    and the text against :func:`render` of what it holds. Empty when it is."""
    doc = json.loads(text)
    problems = [f"table {key}: digest {t.get('digest')} but its content hashes to {table_digest(t)}"
                for key, t in doc.get("tables", {}).items() if t.get("digest") != table_digest(t)]
    if doc.get("format") != FORMAT:
        problems.append(f"format {doc.get('format')!r}, the generator writes {FORMAT}")
    elif render(doc["tables"]) != text:
        problems.append("the text is not the generator's rendering of the tables it holds")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fxtrt.backend.tensorrt.operator_tables",
                                     description="Generate fxtrt's TensorRT operator tables from onnx-tensorrt.")
    parser.add_argument("--git", type=Path, help="an onnx-tensorrt git directory; tables given as KEY=REF")
    parser.add_argument("tables", nargs="*", metavar="KEY=REF", help="e.g. 10=10.1-GA (with --git)")
    parser.add_argument("--file", nargs=4, action="append", default=[], metavar=("KEY", "PATH", "REF", "COMMIT"),
                        help="a table from a file, with the ref and commit it was taken from")
    parser.add_argument("--out", type=Path, default=TABLES_FILE, help="where to write the tables")
    args = parser.parse_args(argv)
    sources = []
    for item in args.tables:
        key, eq, ref = item.partition("=")
        if not eq or args.git is None:
            parser.error(f"{item!r}: give KEY=REF together with --git DIR")
        sources.append(from_git(args.git, key, ref))
    sources += [Source(key, Path(path).read_text(), ref, commit) for key, path, ref, commit in args.file]
    if not sources:
        parser.error("no tables given")
    text = generate(sources)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("wrote %s: %s", args.out, ", ".join(f"{s.key} from {s.repo}@{s.ref} ({s.commit[:12]})" for s in sources))
    return 0


if __name__ == "__main__":
    sys.exit(main())
