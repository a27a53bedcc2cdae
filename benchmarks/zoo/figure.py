"""The zoo run's figure: outcome shares per zoo and exporter, and the published rates beside ours."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from benchmarks.figure import OUTCOME_COLORS  # noqa: E402
from benchmarks.zoo.job import OUTCOMES  # noqa: E402
from benchmarks.zoo.tables import PUBLISHED, ours  # noqa: E402

COLORS = {**OUTCOME_COLORS, "TIMEOUT": "#6a1b9a", "OOM": "#ad1457", "BUILD_FAILED": "#eeeeee"}


def _outcomes(ax: Any, rows: Sequence[dict[str, Any]], exporters: Sequence[str]) -> None:
    pairs = [(z, e) for z in sorted({r.get("zoo") or "?" for r in rows}) for e in exporters]
    left = [0.0] * len(pairs)
    totals = [max(1, sum(1 for r in rows if (r.get("zoo") or "?", r["exporter"]) == p)) for p in pairs]
    for outcome in OUTCOMES:
        shares = [sum(1 for r in rows if (r.get("zoo") or "?", r["exporter"]) == p and r.get("outcome") == outcome) / t
                  for p, t in zip(pairs, totals)]
        if any(shares):
            ax.barh(range(len(pairs)), shares, left=left, color=COLORS.get(outcome, "#999999"), label=outcome,
                    edgecolor="#bbbbbb" if outcome == "BUILD_FAILED" else None)
            left = [a + b for a, b in zip(left, shares)]
    ax.set_yticks(range(len(pairs)), [f"{z} / {e} ({t})" for (z, e), t in zip(pairs, totals)], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of cells")
    ax.set_title("Outcome per zoo and exporter")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=5)


def _published(ax: Any, rows: Sequence[dict[str, Any]], exporters: Sequence[str]) -> None:
    width = 0.8 / (len(exporters) + 1)
    for i, p in enumerate(PUBLISHED):
        ax.bar(i, 100 * p.rate, width, color="#9e9e9e", label="published (torch.export / converters)" if i == 0 else None)
        for j, e in enumerate(exporters):
            num, den = ours(rows, e, p.ours)
            if den:
                ax.bar(i + (j + 1) * width, 100 * num / den, width, color=f"C{j}", label=e if i == 0 else None)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(PUBLISHED))],
                  ["timm", "TorchBench\n(ours: tv+hf)", "GitHub 14k\n(ours: all)", "silent share\nof failures"], fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.set_title("Published rates beside ours")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)


def write_figure(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    exporters = list(dict.fromkeys(r["exporter"] for r in rows))
    n = max(1, len({r.get("zoo") for r in rows}) * len(exporters))
    fig, axes = plt.subplots(1, 2, figsize=(15, max(4.5, 0.3 * n + 2)), gridspec_kw={"width_ratios": [1.3, 1]})
    _outcomes(axes[0], rows, exporters)
    _published(axes[1], rows, exporters)
    fig.suptitle("Export fidelity over model zoos (judged against eager)")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
