"""The run's figure: outcomes per exporter, and per-model export-time and shape-op ratios.

Ratios are ``reference / baseline`` for each baseline, drawn from 1 on a
log axis, so a bar to the left of 1 means the reference exporter was faster
or emitted fewer shape ops.  The reference is fxtrt when fxtrt exported anything, otherwise
the first exporter that did (so the figure is useful before fxtrt works).
Shape-op counts get +1 each so that a zero count still has a ratio.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from benchmarks.outcomes import Outcome  # noqa: E402

OUTCOME_COLORS = {
    Outcome.PASS.value: "#2e7d32",
    Outcome.SILENT.value: "#c62828",
    Outcome.LOUD.value: "#ef6c00",
    Outcome.REFUSED.value: "#1565c0",
    Outcome.CRASH.value: "#616161",
    Outcome.UNSTABLE.value: "#f9a825",
    Outcome.ERROR.value: "#bdbdbd",
}
_EXPORTED = (Outcome.PASS.value, Outcome.SILENT.value, Outcome.LOUD.value)


def choose_reference(rows: Sequence[dict[str, Any]], exporters: Sequence[str], preferred: str = "fxtrt") -> str | None:
    exported = [e for e in exporters if any(r["exporter"] == e and r.get("outcome") in _EXPORTED for r in rows)]
    if preferred in exported:
        return preferred
    return exported[0] if exported else None


def ratios(
    rows: Sequence[dict[str, Any]], reference: str, baseline: str, key: str, smoothing: float = 0.0
) -> dict[str, float]:
    """Per model, ``(reference[key] + smoothing) / (baseline[key] + smoothing)`` where both exported."""
    by_cell = {(r["model"], r["exporter"]): r for r in rows}
    out = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        ref, base = by_cell.get((model, reference)), by_cell.get((model, baseline))
        if not ref or not base or ref.get(key) is None or base.get(key) is None:
            continue
        if ref.get("outcome") not in _EXPORTED or base.get("outcome") not in _EXPORTED:
            continue
        denominator = base[key] + smoothing
        if denominator > 0:
            out[model] = (ref[key] + smoothing) / denominator
    return out


def _outcome_panel(ax: Any, rows: Sequence[dict[str, Any]], exporters: Sequence[str]) -> None:
    bottoms = [0] * len(exporters)
    for outcome, color in OUTCOME_COLORS.items():
        counts = [sum(1 for r in rows if r["exporter"] == e and r.get("outcome") == outcome) for e in exporters]
        if any(counts):
            ax.bar(exporters, counts, bottom=bottoms, color=color, label=outcome)
            bottoms = [b + c for b, c in zip(bottoms, counts)]
    ax.set_ylabel("models")
    ax.set_title("Outcome per exporter")
    ax.legend(fontsize=8)


def _ratio_panel(ax: Any, rows: Sequence[dict[str, Any]], reference: str | None, baselines: Sequence[str], key: str, title: str, smoothing: float) -> None:
    ax.set_title(title)
    series = {b: ratios(rows, reference, b, key, smoothing) for b in baselines} if reference else {}
    models = [m for m in dict.fromkeys(r["model"] for r in rows) if any(m in s for s in series.values())]
    if not models:
        ax.text(0.5, 0.5, "no model exported by both", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    height = 0.8 / max(1, len(series))
    for i, (baseline, values) in enumerate(series.items()):
        ys = [j + i * height for j, m in enumerate(models) if m in values]
        xs = [values[m] for m in models if m in values]
        bars = ax.barh(ys, [x - 1.0 for x in xs], left=1.0, height=height, label=f"{reference} / {baseline}")
        # A tick at the value keeps a ratio of exactly 1 (a zero-width bar) visible.
        ax.scatter(xs, ys, marker="|", s=60, color=bars.patches[0].get_facecolor() if bars.patches else None)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(models))], models, fontsize=7)
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="lower right")


def write_figure(path: Path, rows: Sequence[dict[str, Any]], exporters: Sequence[str]) -> Path:
    reference = choose_reference(rows, exporters)
    baselines = [e for e in exporters if e != reference]
    n_models = len(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(18, max(5.0, 0.28 * n_models + 2)), gridspec_kw={"width_ratios": [1, 1.4, 1.4]})
    _outcome_panel(axes[0], rows, exporters)
    _ratio_panel(axes[1], rows, reference, baselines, "export_s", "Export time ratio (log)", 0.0)
    _ratio_panel(axes[2], rows, reference, baselines, "shape_ops", "Shape-op ratio, counts +1 (log)", 1.0)
    fig.suptitle(f"fxtrt fidelity benchmark (ratios: {reference or 'none'} / baseline)")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
