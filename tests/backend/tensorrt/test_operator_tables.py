"""The shipped TensorRT operator tables are the generator's output, and the generator reads
onnx-tensorrt's operators.md as upstream writes it (this test's markdown is our own, in that form)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fxtrt.backend.tensorrt.operator_tables import (
    TABLES_FILE,
    Source,
    from_git,
    generate,
    generator_mismatches,
    load_tables,
    main,
    make_table,
    parse_header,
    parse_rows,
)
from fxtrt.errors import ConfigError

SAMPLE = """# Supported ONNX Operators

TensorRT 12.3 supports operators in the inclusive range of opset 9 to opset 30. More below.

TensorRT supports the following ONNX data types: FLOAT32, FLOAT16, INT64, and BOOL

> Note: TensorRT will attempt to cast DOUBLE down to FLOAT.

## Operator Support Matrix

| Operator | Supported  | Supported Types | Restrictions |
|----------|------------|-----------------|--------------|
| Abs      | Y          | FP32, FP16, INT64 |
| Frobnicate | N        |
| Pool     | Y          | FP32 | 2D or 3D pooling only. `dilations` must be empty or all ones                |
| Quirk    | Y [EXPERIMENTAL] | FP32, FP16 | `K` input must be an initializer
| Nope     | N          | Not supported. Compose it from other ops.
"""


def test_parser_reads_rows_as_upstream_writes_them() -> None:
    rows = parse_rows(SAMPLE)
    assert rows["Abs"] == {"supported": True, "experimental": False, "types": ["FP32", "FP16", "INT64"],
                           "restrictions": ""}
    assert rows["Frobnicate"]["supported"] is False
    assert rows["Pool"]["restrictions"] == "2D or 3D pooling only. `dilations` must be empty or all ones"
    assert rows["Quirk"]["experimental"] and rows["Quirk"]["restrictions"] == "`K` input must be an initializer"
    assert rows["Nope"]["types"] == [] and rows["Nope"]["restrictions"].startswith("Not supported.")
    header = parse_header(SAMPLE)
    assert header["named_release"] == "12.3" and header["opset"] == [9, 30]
    assert header["data_types"] == ["FLOAT32", "FLOAT16", "INT64", "BOOL"]
    assert header["notes"] == ["Note: TensorRT will attempt to cast DOUBLE down to FLOAT."]


def test_a_file_without_a_table_is_refused() -> None:
    with pytest.raises(ConfigError, match="no operator rows"):
        parse_rows("# README\n\nnothing here\n")


def test_generation_is_deterministic_and_records_where_it_came_from() -> None:
    src = Source("12", SAMPLE, "release/12.3", "0" * 40)
    text = generate([src])
    assert text == generate([src]) and generator_mismatches(text) == []
    table = json.loads(text)["tables"]["12"]
    assert (table["repo"], table["ref"], table["commit"]) == ("onnx/onnx-tensorrt", "release/12.3", "0" * 40)
    assert len(table["source_sha256"]) == 64 and table == make_table(src)


def test_shipped_tables_are_the_generators_output() -> None:
    text = TABLES_FILE.read_text()
    assert generator_mismatches(text) == []
    tables = load_tables()
    assert "10" in tables and tables["10"]["commit"] and tables["10"]["ref"]


def test_editing_one_shipped_entry_is_caught() -> None:
    doc = json.loads(TABLES_FILE.read_text())
    doc["tables"]["10"]["operators"]["BitwiseAnd"]["supported"] = True
    edited = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    assert any("digest" in p for p in generator_mismatches(edited))


def _snapshot() -> Path | None:
    path = Path(os.environ.get("FXTRT_ONNX_TENSORRT_GIT", "/work/.mirror/onnx+onnx-tensorrt/repo"))
    return path if (path / "HEAD").exists() or (path / ".git").exists() else None


def test_shipped_tables_regenerate_from_the_upstream_snapshot() -> None:
    """Where onnx-tensorrt's git snapshot is on disk, the generator on the recorded commit gives the
    shipped tables exactly (FXTRT_ONNX_TENSORRT_GIT points at another copy)."""
    git = _snapshot()
    if git is None:
        pytest.skip("no onnx-tensorrt git snapshot here (set FXTRT_ONNX_TENSORRT_GIT)")
    shipped = load_tables()
    for key, table in shipped.items():
        try:
            src = from_git(git, key, table["commit"])
        except ConfigError as exc:
            pytest.skip(f"snapshot lacks commit {table['commit']}: {exc}")
        regenerated = make_table(Source(key, src.text, table["ref"], src.commit))
        assert regenerated == table, f"table {key} differs from {table['ref']}@{table['commit']}"


def test_command_line_writes_the_file(tmp_path: Path) -> None:
    md = tmp_path / "operators.md"
    md.write_text(SAMPLE)
    out = tmp_path / "tables.json"
    assert main(["--file", "12", str(md), "release/12.3", "f" * 40, "--out", str(out)]) == 0
    assert generator_mismatches(out.read_text()) == [] and "12" in json.loads(out.read_text())["tables"]
