"""The results store: SQLite (the standard library's), one row per finished cell, committed as it arrives.

Why SQLite rather than Parquet: a cell is worth keeping the moment it finishes, and SQLite commits
one row at a time, atomically and durably (WAL journal), so a run that is killed loses only the
cells in flight, and a reader (``--report``, a test) can read while a run writes. Parquet files
are written whole; appending cell by cell means a file per cell or rewriting the file, and a
kill mid-write leaves a torn file. SQLite needs no extra package, and ``(model, exporter)`` as the
primary key is what resuming asks: which cells are done.
"""
from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any, Iterable

STORE_NAME = "zoo.sqlite"
# Columns kept as such (the rest of a row is in ``extra``, as JSON).
COLUMNS = (
    "model", "exporter", "zoo", "family", "dims", "variant", "input", "outcome", "error_type", "error_line",
    "error_frame", "detail", "export_s", "cell_s", "prepare_s", "onnx_nodes", "shape_ops", "ort_ms_b1",
    "ort_min_ms_b1", "ort_rounds", "peak_rss_mb", "watch_rss_mb", "max_abs_err", "host",
)
_REAL = {"export_s", "cell_s", "prepare_s", "ort_ms_b1", "ort_min_ms_b1", "peak_rss_mb", "watch_rss_mb", "max_abs_err"}
_INT = {"onnx_nodes", "shape_ops", "ort_rounds"}
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS cells (
    {', '.join(f"{c} {'REAL' if c in _REAL else 'INTEGER' if c in _INT else 'TEXT'}" for c in COLUMNS)},
    versions TEXT, extra TEXT, run_id INTEGER, finished_at TEXT,
    PRIMARY KEY (model, exporter)
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, started_at TEXT, finished_at TEXT, meta TEXT, summary TEXT
);
"""


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


class ResultStore:
    """``cells`` (one row per (model, exporter), replaced when a cell reruns) and ``runs`` (one per run)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # with WAL: a committed row survives a killed process
        self.db.executescript(_SCHEMA)
        self.db.commit()

    def close(self) -> None:
        self.db.close()

    def finished(self) -> dict[tuple[str, str], str]:
        """``{(model, exporter): outcome}`` of every stored cell."""
        return {(m, e): o for m, e, o in self.db.execute("SELECT model, exporter, outcome FROM cells")}

    def add_cell(self, row: dict[str, Any], run_id: int) -> None:
        values = [row.get(c) for c in COLUMNS]
        extra = {k: v for k, v in row.items() if k not in COLUMNS and k != "versions"}
        self.db.execute(
            f"INSERT OR REPLACE INTO cells ({', '.join(COLUMNS)}, versions, extra, run_id, finished_at) "
            f"VALUES ({', '.join('?' * (len(COLUMNS) + 4))})",
            [*values, json.dumps(row.get("versions"), sort_keys=True), json.dumps(extra, default=str), run_id, _now()],
        )
        self.db.commit()

    def set_latency(self, model: str, ms: dict[str, float], min_ms: dict[str, float], rounds: int) -> None:
        """The interleaved ORT latencies at batch 1 (median and minimum over ``rounds``) of a model's cells."""
        self.db.executemany("UPDATE cells SET ort_ms_b1 = ?, ort_min_ms_b1 = ?, ort_rounds = ? WHERE model = ? AND exporter = ?",
                            [(v, min_ms.get(e), rounds, model, e) for e, v in ms.items()])
        self.db.commit()

    def start_run(self, meta: dict[str, Any]) -> int:
        cursor = self.db.execute("INSERT INTO runs (started_at, meta) VALUES (?, ?)", (_now(), json.dumps(meta, default=str)))
        self.db.commit()
        return int(cursor.lastrowid)

    def finish_run(self, run_id: int, summary: dict[str, Any]) -> None:
        self.db.execute("UPDATE runs SET finished_at = ?, summary = ? WHERE id = ?", (_now(), json.dumps(summary), run_id))
        self.db.commit()

    def cells(self) -> list[dict[str, Any]]:
        """Every stored cell as a dict (``versions`` and ``extra`` decoded, ``extra`` merged in)."""
        cursor = self.db.execute("SELECT * FROM cells ORDER BY zoo, model, exporter")
        names = [d[0] for d in cursor.description]
        out = []
        for values in cursor:
            row = dict(zip(names, values))
            extra = json.loads(row.pop("extra") or "{}")
            row["versions"] = json.loads(row["versions"] or "null")
            out.append(extra | row)
        return out

    def runs(self) -> list[dict[str, Any]]:
        cursor = self.db.execute("SELECT id, started_at, finished_at, meta, summary FROM runs ORDER BY id")
        return [{"id": i, "started_at": s, "finished_at": f, "meta": json.loads(m or "{}"), "summary": json.loads(u or "{}")}
                for i, s, f, m, u in cursor]


def to_do(finished: dict[tuple[str, str], str], cells: Iterable[tuple[str, str]], retry_failed: bool) -> tuple[list[tuple[str, str]], int]:
    """The cells to run, and how many are skipped as done before: every stored cell, or with
    ``retry_failed`` only the stored PASS cells (every other outcome is a failure to retry)."""
    run, skipped = [], 0
    for cell in cells:
        outcome = finished.get(cell)
        if outcome is None or (retry_failed and outcome != "PASS"):
            run.append(cell)
        else:
            skipped += 1
    return run, skipped
