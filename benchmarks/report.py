"""Write the run's results: results.json (everything), results.csv (one row per cell), results.md (tables).

Every file is written to a temporary name and renamed, so a reader never
sees a half-written file, and an interrupted run leaves the last complete
snapshot in place.
"""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from benchmarks.outcomes import Outcome

CSV_COLUMNS = (
    "model", "family", "exporter", "outcome", "max_abs_err", "max_rel_err", "onnx_nodes", "shape_ops",
    "export_s", "ort_ms_b1", "ort_ms_b8", "peak_rss_mb", "export_rss_mb", "onnx_mb", "batches", "cell_s", "detail",
)

FIGURE_NAME = "fidelity.png"


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def batches_text(row: dict[str, Any]) -> str:
    """``1:ok 3:raised 8:raised 32:raised``."""
    return " ".join(f"{b}:{v['status']}" for b, v in (row.get("batches") or {}).items())


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in {**row, "batches": batches_text(row)}.items()})
    return out.getvalue()


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _md_cell(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def outcome_counts(rows: Sequence[dict[str, Any]], exporter: str, family: str | None = None) -> Counter[str]:
    """Outcomes of one exporter's cells, over every family or one."""
    return Counter(
        r.get("outcome", "?") for r in rows if r["exporter"] == exporter and family in (None, r.get("family"))
    )


def family_summary(results: dict[str, Any]) -> list[str]:
    """Outcome counts per family and exporter, with each family's wall time (reference and cells)."""
    rows = results["rows"]
    exporters = [e["name"] for e in results["meta"]["exporters"]]
    outcomes = [o.value for o in Outcome]
    references = results.get("references", {})
    body = []
    for family in dict.fromkeys(r.get("family", "?") for r in rows):
        models = list(dict.fromkeys(r["model"] for r in rows if r.get("family") == family))
        times = [references.get(m, {}).get("model_s") for m in models]
        wall = sum(times) if times and None not in times else None  # runs before model_s was recorded have none
        for exporter in exporters:
            counts = outcome_counts(rows, exporter, family)
            body.append([family, str(len(models)), _fmt(wall, ".0f"), exporter,
                         *(str(counts.get(o, 0)) for o in outcomes)])
    return ["## Outcomes per family", "", *_table(["family", "models", "wall s", "exporter", *outcomes], body)]


def judged_shapes(results: dict[str, Any]) -> list[str]:
    """The models judged at their own shapes (the dyn family): what was exported and checked."""
    models = [m for m in results["meta"]["models"] if m.get("shapes")]
    if not models:
        return []
    return [
        "## Judged shapes (models with their own batch range or dynamic dims)", "",
        "Every combination of a listed batch size and dim sizes is checked; the export example is batch 1 at each dim's example size.",
        "",
        *_table(["model", "exported for and judged at"], [[m["name"], _md_cell(m["shapes"], 200)] for m in models]),
    ]


def ratio_summary(rows: Sequence[dict[str, Any]], exporters: Sequence[str], reference: str = "fxtrt") -> list[str]:
    """Median fxtrt/baseline ratios over the models both exported (shape ops counted +1, as in the figure)."""
    from benchmarks.figure import ratios

    if reference not in exporters:
        return []
    out = ["## fxtrt against each baseline (medians over models both exported)", ""]
    body = []
    for base in (e for e in exporters if e != reference):
        t = ratios(rows, reference, base, "export_s")
        s = ratios(rows, reference, base, "shape_ops", 1.0)
        n = ratios(rows, reference, base, "onnx_nodes")
        body.append([base, str(len(t)), _fmt(statistics.median(t.values()) if t else None, ".2f"),
                     _fmt(statistics.median(s.values()) if s else None, ".2f"),
                     _fmt(statistics.median(n.values()) if n else None, ".2f")])
    out += _table(["baseline", "models", "export-time ratio", "shape-op ratio (+1)", "node-count ratio"], body)
    return out


def _git_line(meta: dict[str, Any]) -> list[str]:
    """Which fxtrt the run used: the commit, and whether fxtrt/ had uncommitted changes or changed during the run."""
    start, end = meta.get("git") or {}, meta.get("git_at_finish") or {}
    if not start.get("commit"):
        return []
    text = f"fxtrt at commit `{start['commit'][:10]}`"
    if start.get("fxtrt_uncommitted"):
        text += f" with uncommitted changes to fxtrt/ (hash `{start['fxtrt_uncommitted']}`)"
    if end and (end.get("commit"), end.get("fxtrt_uncommitted")) != (start["commit"], start.get("fxtrt_uncommitted")):
        text += f"; fxtrt/ changed during the run (at the end: commit `{(end.get('commit') or '?')[:10]}`"
        text += f", uncommitted hash `{end.get('fxtrt_uncommitted')}`)" if end.get("fxtrt_uncommitted") else ")"
    return [text + ".", ""]


def markdown_text(results: dict[str, Any]) -> str:
    meta = results["meta"]
    rows = results["rows"]
    exporters = [e["name"] for e in meta["exporters"]]
    models = list(dict.fromkeys(r["model"] for r in rows))
    settings = meta["settings"]
    own_shapes = sum(bool(m.get("shapes")) for m in meta["models"])
    checked = f"batch sizes checked: {', '.join(map(str, settings['batches']))}"
    if own_shapes == len(meta["models"]):
        checked = "shapes checked: each model's own (see Judged shapes)"
    elif own_shapes:
        checked += " (models under Judged shapes: their own)"
    lines = [
        f"# fxtrt fidelity benchmark, {meta['date']}",
        "",
        f"{len(models)} models x {len(exporters)} exporters; {checked}; "
        f"tolerance max|onnx-eager| <= {settings['tolerance']['atol']:g} + {settings['tolerance']['rtol']:g}*max|eager|; "
        f"seed {settings['seed']}; {meta['machine']['cpu_count']} CPUs; wall time {_fmt(meta.get('wall_s'), '.0f')} s.",
        "",
        *_git_line(meta),
        "Exporters:",
        "",
    ]
    lines += [f"- `{e['name']}`: {e['label']}" for e in meta["exporters"]]
    lines += ["", "## Outcomes per exporter", ""]
    outcomes = [o.value for o in Outcome]
    counts = {e: outcome_counts(rows, e) for e in exporters}
    lines += _table(["exporter", *outcomes], [[e, *(str(counts[e].get(o, 0)) for o in outcomes)] for e in exporters])
    lines += ["", *family_summary(results)]
    lines += ["", *ratio_summary(rows, exporters)]
    shapes = judged_shapes(results)
    if shapes:
        lines += ["", *shapes]
    lines += ["", f"![outcomes and ratios]({FIGURE_NAME})", "", "## Per model", ""]
    by_cell = {(r["model"], r["exporter"]): r for r in rows}
    references = results.get("references", {})
    lines += _table(
        ["model", *exporters, "wall s"],
        [
            [m, *(by_cell.get((m, e), {}).get("outcome", "–") for e in exporters),
             _fmt(references.get(m, {}).get("model_s"), ".0f")]
            for m in models
        ],
    )
    lines += ["", "## Details", ""]
    lines += _table(
        ["model", "exporter", "outcome", "max abs err", "max rel err", "nodes", "shape ops", "export s",
         "ORT ms b1", "ORT ms b8", "peak RSS MB", "export RSS MB", "batches", "detail"],
        [
            [
                r["model"], r["exporter"], r.get("outcome", "–"), _fmt(r.get("max_abs_err")), _fmt(r.get("max_rel_err")),
                _fmt(r.get("onnx_nodes")), _fmt(r.get("shape_ops")), _fmt(r.get("export_s"), ".2f"),
                _fmt(r.get("ort_ms_b1"), ".2f"), _fmt(r.get("ort_ms_b8"), ".2f"), _fmt(r.get("peak_rss_mb"), ".0f"),
                _fmt(r.get("export_rss_mb"), ".0f"), batches_text(r) or "–", _md_cell(r.get("detail") or ""),
            ]
            for r in rows
        ],
    )
    if results["skipped"]:
        lines += ["", "## Skipped models (could not be built or run in eager)", ""]
        lines += _table(["model", "reason"], [[s["model"], _md_cell(s["reason"])] for s in results["skipped"]])
    lines.append("")
    return "\n".join(lines)


def write_results(out_dir: Path, results: dict[str, Any], *, final: bool) -> list[Path]:
    """Write json and csv (every call) and, when ``final``, the Markdown table; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "results.json", out_dir / "results.csv"]
    write_text_atomic(written[0], json.dumps(results, indent=2, default=str))
    write_text_atomic(written[1], csv_text(results["rows"]))
    if final:
        written.append(out_dir / "results.md")
        write_text_atomic(written[-1], markdown_text(results))
    return written


def main() -> None:
    """``python -m benchmarks.report DIR``: re-render results.md and the figure from DIR/results.json."""
    import sys

    from benchmarks.figure import write_figure

    out_dir = Path(sys.argv[1])
    results = json.loads((out_dir / "results.json").read_text())
    write_text_atomic(out_dir / "results.md", markdown_text(results))
    write_figure(out_dir / FIGURE_NAME, results["rows"], [e["name"] for e in results["meta"]["exporters"]])
    print(f"wrote {out_dir / 'results.md'} and {out_dir / FIGURE_NAME}")


if __name__ == "__main__":
    main()
