"""The zoo run's tables (zoo.md) and figure (zoo.png), from the results store alone.

A cell is *judged* when some variant of its model built and ran in eager (every outcome but
BUILD_FAILED); pass rates are PASS over judged cells. Failure classes group the judged non-PASS
cells (REFUSED apart) by exporter, outcome, error type and innermost frame; fxtrt's refusals
group by error class and the message's first line with numbers and names blanked.
"""
from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from benchmarks.report import _fmt, _md_cell, _table, write_text_atomic
from benchmarks.zoo.job import BUILD_FAILED, OUTCOMES

MARKDOWN, FIGURE = "zoo.md", "zoo.png"
FAILED = ("SILENT", "LOUD", "CRASH", "UNSTABLE", "TIMEOUT", "OOM", "ERROR")


@dataclass(frozen=True)
class Published:
    """A published rate, and which of our cells it is set beside."""

    what: str
    rate: float
    counts: str
    source: str
    ours: str  # "timm", "tv+hf", "all", or "silent share"


PUBLISHED = (
    Published("torch.export passes timm models", 0.95, "58/61", "pytorch PR #104382", "timm"),
    Published("torch.export passes TorchBench models", 0.54, "41/75", "pytorch PR #104382", "tv+hf"),
    Published("torch.export passes tests of 14k GitHub models", 0.87, "87% of tests", "pytorch issue #93667", "all"),
    Published("converter failures that are silently wrong", 0.33, "~33%", "Jajal et al., ISSTA 2024", "silent share"),
)
OURS_TEXT = {"timm": "timm cells", "tv+hf": "torchvision + transformers cells (TorchBench draws on both)",
             "all": "every judged cell", "silent share": "SILENT among judged non-PASS cells"}


def _judged(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("outcome") != BUILD_FAILED]


def _rate(rows: Sequence[dict[str, Any]]) -> tuple[int, int]:
    judged = _judged(rows)
    return sum(r.get("outcome") == "PASS" for r in judged), len(judged)


def ours(rows: Sequence[dict[str, Any]], exporter: str, population: str) -> tuple[int, int]:
    """(numerator, denominator) of our number for one published row and one exporter."""
    mine = [r for r in rows if r["exporter"] == exporter]
    if population == "silent share":
        failed = [r for r in _judged(mine) if r.get("outcome") not in ("PASS", "REFUSED")]
        return sum(r.get("outcome") == "SILENT" for r in failed), len(failed)
    zoos = {"timm": ("timm",), "tv+hf": ("tv", "hf"), "all": None}[population]
    return _rate([r for r in mine if zoos is None or r.get("zoo") in zoos])


def _pct(num: int, den: int) -> str:
    return f"{100 * num / den:.0f}% ({num}/{den})" if den else "–"


def pass_rates(rows: Sequence[dict[str, Any]], exporters: Sequence[str]) -> list[str]:
    body = []
    for zoo in sorted({r.get("zoo") or "?" for r in rows}):
        for e in exporters:
            cells = [r for r in rows if r.get("zoo") == zoo and r["exporter"] == e]
            counts = Counter(r.get("outcome") for r in cells)
            body.append([zoo, e, str(len(cells)), _pct(*_rate(cells)), *(str(counts.get(o, 0)) for o in OUTCOMES)])
    return ["## Pass rate per zoo and exporter", "", "Pass rate: PASS over judged cells (all but BUILD_FAILED).", "",
            *_table(["zoo", "exporter", "cells", "pass rate", *OUTCOMES], body)]


def family_rates(rows: Sequence[dict[str, Any]], exporters: Sequence[str]) -> list[str]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r.get("zoo") or "?", r.get("family") or "?")].append(r)
    body = [[zoo, fam, str(len({r["model"] for r in cells})),
             *(_pct(*_rate([r for r in cells if r["exporter"] == e])) for e in exporters)]
            for (zoo, fam), cells in sorted(groups.items())]
    return ["## Pass rate per family", "", *_table(["zoo", "family", "models", *exporters], body)]


def _examples(rows: Sequence[dict[str, Any]], n: int = 3) -> str:
    models = list(dict.fromkeys(r["model"] for r in rows))
    return ", ".join(models[:n]) + (f" (+{len(models) - n})" if len(models) > n else "")


def failure_classes(rows: Sequence[dict[str, Any]]) -> list[str]:
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("outcome") in FAILED:
            groups[(r["exporter"], r["outcome"], r.get("error_type") or "–", r.get("error_frame") or "–")].append(r)
    body = [[*key, str(len(cells)), _md_cell(_examples(cells), 120), _md_cell(cells[0].get("error_line") or cells[0].get("detail") or "", 140)]
            for key, cells in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))]
    return ["## Failure classes (judged cells, not PASS, not REFUSED)", "",
            *_table(["exporter", "outcome", "error type", "first frame", "cells", "example models", "first line"], body)]


def reason_class(line: str) -> str:
    """A refusal's message with numbers, quoted names and node names blanked, so alike refusals group."""
    text = re.sub(r"(['\"`])[^'\"`]*\1", "'…'", line or "")
    text = re.sub(r"\d+", "N", text)
    return text[:100]


def refusals(rows: Sequence[dict[str, Any]], exporter: str = "fxtrt") -> list[str]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["exporter"] == exporter and r.get("outcome") == "REFUSED":
            groups[(r.get("error_type") or "?", reason_class(r.get("error_line") or ""))].append(r)
    body = [[t, _md_cell(reason, 110), str(len(cells)), _md_cell(_examples(cells), 120)]
            for (t, reason), cells in sorted(groups.items(), key=lambda kv: -len(kv[1]))]
    return [f"## {exporter} refusals by reason class", "", *_table(["error class", "reason", "cells", "example models"], body)]


def baseline_only(rows: Sequence[dict[str, Any]], reference: str = "fxtrt") -> list[str]:
    """The models a baseline passes and ``reference`` does not: each needs a fix or a reason."""
    by_model: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        by_model[r["model"]][r["exporter"]] = r
    body = []
    for model, cells in sorted(by_model.items()):
        mine = cells.get(reference)
        passing = [e for e, r in cells.items() if e != reference and r.get("outcome") == "PASS"]
        if mine is not None and passing and mine.get("outcome") != "PASS":
            body.append([model, mine.get("outcome") or "?", ", ".join(passing),
                         _md_cell(mine.get("error_line") or mine.get("detail") or "", 160)])
    return [f"## Models a baseline passes and {reference} does not", "",
            *_table(["model", f"{reference} outcome", "passed by", f"{reference} says"], body)]


def not_built(rows: Sequence[dict[str, Any]]) -> list[str]:
    per_model = {r["model"]: r for r in rows if r.get("outcome") == BUILD_FAILED}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in per_model.values():
        groups[(r.get("zoo") or "?", r.get("error_type") or "?")].append(r)
    body = [[zoo, t, str(len(cells)), _md_cell(_examples(cells), 120), _md_cell(cells[0].get("detail") or "", 160)]
            for (zoo, t), cells in sorted(groups.items(), key=lambda kv: -len(kv[1]))]
    return ["## Models not built (BUILD_FAILED), by zoo and error", "",
            *_table(["zoo", "error type", "models", "examples", "reason (first example)"], body)]


def published(rows: Sequence[dict[str, Any]], exporters: Sequence[str]) -> list[str]:
    body = [[p.what, f"{100 * p.rate:.0f}% ({p.counts})", p.source, OURS_TEXT[p.ours],
             *(_pct(*ours(rows, e, p.ours)) for e in exporters)] for p in PUBLISHED]
    return ["## Published torch.export rates beside ours", "",
            "For context only: the populations differ (their models, ours; their checks, ours against eager at other sizes).", "",
            *_table(["published", "rate", "source", "ours on", *exporters], body)]


def cost(rows: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]], zoo_sizes: dict[str, int]) -> list[str]:
    done = [r for r in runs if r.get("summary", {}).get("wall_s")]
    body = []
    for r in done:
        s = r["summary"]
        rate = s["ran"] / (s["wall_s"] / 3600 * s["cores"]) if s["ran"] else None
        body.append([str(r["id"]), r["started_at"] or "", str(s["cores"]), str(s["ran"]), str(s["skipped"]),
                     str(s["timed_out"]), _fmt(s["wall_s"], ".0f"), _fmt(rate, ".0f")])
    lines = ["## Cost", "", *_table(["run", "started", "cores", "cells run", "skipped", "timed out", "wall s",
                                     "cells/hour/core"], body)]
    exporters = max(1, len({r["exporter"] for r in rows}))
    est = []
    for zoo in sorted({r.get("zoo") for r in rows if r.get("zoo")}):
        per_cell = [(r.get("cell_s") or 0.0) + (r.get("prepare_s") or 0.0) / exporters for r in rows if r.get("zoo") == zoo]
        mean = statistics.fmean(per_cell) if per_cell else None
        size = zoo_sizes.get(zoo)
        hours = size * exporters * mean / 3600 if size and mean else None
        est.append([zoo, str(len(per_cell)), _fmt(mean, ".1f"), _fmt(statistics.median(per_cell) if per_cell else None, ".1f"),
                    str(size or "–"), _fmt(hours, ".0f")])
    lines += ["", "Per-cell cost (the cell's child wall time plus its share of the model's prepare step) and what a "
              f"whole zoo would take with {exporters} exporter(s):", "",
              *_table(["zoo", "cells", "mean s/cell", "median s/cell", "zoo models", "core-hours, whole zoo"], est)]
    return lines


def _header(rows: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]], exporters: Sequence[str]) -> list[str]:
    models = {r["model"] for r in rows}
    versions = next((r["versions"] for r in reversed(rows) if r.get("versions")), {}) or {}
    last = runs[-1]["meta"] if runs else {}
    lines = [
        "# Export fidelity over model zoos", "",
        f"{len(models)} models, {len(rows)} cells, exporters {', '.join(exporters)}. Each cell exports from a batch-1 "
        "example and is judged against eager at batch 1 and 3 (and at the smallest and largest size of a dynamic "
        "image size, sequence or audio length); latency is ONNX Runtime at batch 1, interleaved across exporters.", "",
        "Versions (latest cell): " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()) if v), "",
    ]
    if last:
        lines += [f"Last run: `{last.get('command', '')}` ({last.get('jobs')} workers, "
                  f"{'Ray' if last.get('ray') else 'no Ray'}{', ' + last['address'] if last.get('address') else ''}).", ""]
    return lines


def markdown(rows: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]]) -> str:
    sizes = {z: n for r in runs for z, n in (r["meta"].get("zoo_sizes") or {}).items()}  # as each run listed them
    exporters = list(dict.fromkeys(r["exporter"] for r in rows))
    sections = [_header(rows, runs, exporters), pass_rates(rows, exporters), [f"![outcomes per zoo and exporter]({FIGURE})"],
                published(rows, exporters), family_rates(rows, exporters), failure_classes(rows), refusals(rows),
                baseline_only(rows), not_built(rows), cost(rows, runs, sizes)]
    return "\n".join(line for section in sections for line in [*section, ""])


def write_report(out_dir: Path, store: Any) -> list[Path]:
    """zoo.md and zoo.png in ``out_dir``, from every cell in ``store``."""
    from benchmarks.zoo.figure import write_figure

    rows, runs = store.cells(), store.runs()
    md = out_dir / MARKDOWN
    write_text_atomic(md, markdown(rows, runs))
    return [md, write_figure(out_dir / FIGURE, rows)]
