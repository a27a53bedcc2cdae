"""The latency benchmark (issue 19, item 4): how "best baseline" and the ratio are decided, and one
small run as a user runs it, ``python -m benchmarks.latency``."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.latency_timing import SUBJECT, TUNED, summarize

REPO = Path(__file__).resolve().parents[1]


def _measured(times: dict[str, list[float]], status: dict[str, str]) -> dict:
    return {"ok": True, "cases": {"8": "8"}, "contestants": [
        {"name": n, "error": "", "status": {"8": status.get(n, "ok")}, "times_s": {"8": t}} for n, t in times.items()]}


def test_a_wrong_baseline_is_never_best_however_fast():
    rows = summarize(_measured(
        {SUBJECT: [2.0, 2.0, 2.0], "onnx_dynamo": [1.0, 1.0, 1.0], "onnx_legacy": [4.0, 4.0, 4.0]},
        {"onnx_dynamo": "wrong: output 0: max abs err 3 > ..."}))
    (row,) = rows
    assert row["best"] == "onnx_legacy"
    assert row[SUBJECT]["ratio"] == 0.5
    assert row["excluded"] == {"onnx_dynamo": "wrong: output 0: max abs err 3 > ..."}


def test_the_ratio_is_the_median_of_per_round_ratios_to_the_fastest_correct_baseline():
    rows = summarize(_measured(
        {SUBJECT: [1.0, 3.0, 1.2, 1.1], TUNED: [1.0, 1.0, 1.0, 1.0], "onnx_dynamo": [1.0, 1.0, 1.0, 1.0],
         "onnx_legacy": [2.0, 0.9, 2.0, 2.0]}, {}))
    (row,) = rows
    assert row["best"] == "onnx_dynamo"  # lowest median, though legacy won one round
    assert row[SUBJECT]["ratio"] == pytest.approx(1.15)  # median of 1.0, 3.0, 1.2, 1.1: the slow round does not decide it
    assert row[SUBJECT]["p25"] > 1.0 and row[TUNED]["ratio"] == 1.0


def test_no_correct_baseline_gives_no_ratio():
    (row,) = summarize(_measured({SUBJECT: [1.0], "onnx_legacy": [0.5]}, {"onnx_legacy": "raised: Fail"}))
    assert row["best"] is None and SUBJECT not in row


def test_a_small_run_writes_the_table_and_the_timings(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.latency", "--models", "seed/flatten_recommended", "--rounds", "3",
         "--tuned", "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    bundle = json.loads((tmp_path / "latency.json").read_text())
    entry = bundle["models"]["seed/flatten_recommended"]
    assert [r["batch"] for r in entry["rows"]] == [1, 8]
    for row in entry["rows"]:
        assert row["best"] in ("onnx_dynamo", "onnx_legacy") and row[SUBJECT]["status"] == "ok"
        assert set(row["median_ms"]) == {SUBJECT, TUNED, "onnx_dynamo", "onnx_legacy"}
    names = {c["name"]: c for c in entry["measured"]["contestants"]}
    assert all(len(t) == 3 for t in names[SUBJECT]["times_s"].values())
    assert isinstance(names[SUBJECT]["ort_op_counts"], dict)  # what ORT runs after its fusions
    table = (tmp_path / "latency.md").read_text()
    assert "| seed/flatten_recommended | 8 |" in table
