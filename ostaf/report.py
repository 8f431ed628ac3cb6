"""Aggregate per-image metrics into the paper's table (CSV + Markdown) and metric-vs-λ curves."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path

import numpy as np

from ostaf.io import atomic_write

# The paper's layout: which metrics are reported for which attribute.
COLUMNS = {
    "appearance": ("clip_t", "dino", "gram"),
    "style": ("clip_t", "dino", "gram"),
    "shape": ("clip_t", "iou"),
}
# Attribute World items also carry exact metrics (ostaf.world.references): reported when present.
WORLD_COLUMNS = {
    "appearance": ("appearance_dist", "appearance_match", "text_control"),
    "style": (),
    "shape": ("shape_iou", "shape_match", "text_control"),
}
# every metric a table can hold, in column order: the paper's first, then the world's
TABLE_METRICS = tuple(dict.fromkeys(m for table in (COLUMNS, WORLD_COLUMNS) for ms in table.values() for m in ms))


def significant(value: float, digits: int = 4) -> float:
    """`digits` significant digits: a Gram distance of 3e-6 must not print as 0.0 (fixed decimals did)."""
    return float(f"{value:.{digits}g}")


def paper_table(rows: list[dict], lam: float | None = None) -> list[dict]:
    """One row per attribute: the mean of each of its metrics over items (at one λ, if given)."""
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    items: dict[str, set] = defaultdict(set)  # n counts items (references), not prompt rows
    for index, row in enumerate(rows):
        if lam is None or row["lam"] == lam:
            items[row["attribute"]].add(row.get("item", index))
            for metric in COLUMNS[row["attribute"]] + WORLD_COLUMNS[row["attribute"]]:
                if row.get(metric) is not None:
                    values[row["attribute"]][metric].append(float(row[metric]))
    return [
        {
            "attribute": attr,
            "n": len(items[attr]),
            **{m: significant(float(np.mean(v))) for m, v in values[attr].items() if v},
        }
        for attr in COLUMNS
        if attr in values
    ]


def _keys(table: list[dict]) -> list[str]:
    return ["attribute", "n", *(m for m in TABLE_METRICS if any(m in row for row in table))]


def to_csv(table: list[dict]) -> str:
    keys = _keys(table)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, restval="")
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def to_markdown(table: list[dict]) -> str:
    keys = _keys(table)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row.get(k, "–")) for k in keys) + " |" for row in table]
    return "\n".join(lines) + "\n"


def write_table(table: list[dict], folder: str | Path) -> None:
    folder = Path(folder)
    atomic_write(folder / "table.csv", lambda tmp: tmp.write_text(to_csv(table)))
    atomic_write(folder / "table.md", lambda tmp: tmp.write_text(to_markdown(table)))


def plot_curves(rows: list[dict], path: str | Path) -> Path:
    """Metric vs λ, one panel per metric, one line per attribute."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["clip_t", "dino", "gram", "iou"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3))
    for ax, metric in zip(axes, metrics, strict=True):
        for attr in COLUMNS:
            points = defaultdict(list)
            for row in rows:
                if row["attribute"] == attr and row.get(metric) is not None:
                    points[row["lam"]].append(row[metric])
            if points:
                lams = sorted(points)
                ax.plot(lams, [np.mean(points[x]) for x in lams], marker="o", label=attr)
        ax.set_xlabel("λ")
        ax.set_title(metric)
    axes[0].legend()
    fig.tight_layout()
    out = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return out
