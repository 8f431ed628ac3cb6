"""Aggregate per-image metrics into the paper's table (CSV + Markdown) and metric-vs-λ curves."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ostaf import groups
from ostaf.io import atomic_write

# The paper's layout: which metrics are reported for which attribute.
COLUMNS = {
    "appearance": ("clip_t", "dino", "gram"),
    "style": ("clip_t", "dino", "gram"),
    "shape": ("clip_t", "iou"),
}
Curves = dict[str, dict[str, dict[float, float]]]  # line label → metric → λ → mean


def columns(attribute: str) -> tuple[str, ...]:
    """The paper's metrics for `attribute`, then the exact ones of registered item groups (when rows hold them)."""
    return COLUMNS[attribute] + tuple(c for c in groups.columns(attribute) if c not in COLUMNS[attribute])


def table_metrics() -> tuple[str, ...]:
    """Every metric a table can hold, in column order: the paper's, then the item groups' exact ones."""
    paper = [m for attribute in COLUMNS for m in COLUMNS[attribute]]
    return tuple(dict.fromkeys(paper + [m for attribute in COLUMNS for m in groups.columns(attribute)]))


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
            for metric in columns(row["attribute"]):
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


ITEM_KEYS = ("item", "attribute", "match", "score", "floor", "limit", "gap_closed", "text_control")
ITEM_NOTE = (
    "per item: `score` is the attribute's exact metric (shape: silhouette IoU, higher is better; appearance and "
    "style: distance, lower is better), `match` whether it counts as the reference's; unnamed items (no word names "
    "the attribute) add `floor` (the nearest word, rendered exactly), `limit` (the reference through the model's "
    "VAE) and `gap_closed` = (score − floor) / (limit − floor)"
)


def item_table(rows: list[dict], lam: float) -> list[dict]:
    """One row per item scored by an item group (`groups.strength`): its match, score, text control and, for
    items with a nearest-word floor, the floor, limit and gap closed; means over prompts at `lam`."""
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    attribute_of: dict[str, str] = {}
    for row in rows:
        metrics = groups.strength(row["attribute"])
        if row["lam"] != lam or metrics is None or metrics.score not in row:
            continue
        attribute_of[row["item"]] = row["attribute"]
        named = {"score": metrics.score, "match": metrics.match} | {k: k for k in ITEM_KEYS[4:]}
        for key, metric in named.items():
            if row.get(metric) is not None:
                values[row["item"]][key].append(float(row[metric]))
    return [
        {"item": item, "attribute": attribute_of[item]} | {k: significant(float(np.mean(v)), 3) for k, v in got.items()}
        for item, got in values.items()
    ]


def table_keys(table: list[dict]) -> list[str]:
    return ["attribute", "n", *(m for m in table_metrics() if any(m in row for row in table))]


def to_csv(table: list[dict]) -> str:
    keys = table_keys(table)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, restval="")
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def to_markdown(table: list[dict], keys: list[str] | None = None) -> str:
    """A Markdown table of `keys` (default: the paper table's), '–' where a row has no value."""
    keys = keys or table_keys(table)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row.get(k, "–")) for k in keys) + " |" for row in table]
    return "\n".join(lines) + "\n"


def write_table(table: list[dict], folder: str | Path) -> None:
    folder = Path(folder)
    atomic_write(folder / "table.csv", lambda tmp: tmp.write_text(to_csv(table)))
    atomic_write(folder / "table.md", lambda tmp: tmp.write_text(to_markdown(table)))


def lambda_curves(rows: Iterable[dict], label: Callable[[dict], str | None], metrics: Iterable[str]) -> Curves:
    """Mean of each metric per λ, one curve per `label(row)` (rows labelled None are left out)."""
    points: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    metrics = tuple(metrics)
    for row in rows:
        name = label(row)
        if name is None:
            continue
        for metric in metrics:
            if row.get(metric) is not None:
                points[name][metric][row["lam"]].append(row[metric])
    return {
        name: {m: {lam: float(np.mean(v)) for lam, v in sorted(by_lam.items())} for m, by_lam in per_metric.items()}
        for name, per_metric in points.items()
    }


def plot_lambda_curves(curves: Curves, metrics: Iterable[str], path: str | Path, panel_width: float = 4.0) -> Path:
    """One panel per metric, one line per curve, λ on the x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(metrics)
    colour = {name: plt.cm.tab20(i % 20) for i, name in enumerate(curves)}
    fig, axes = plt.subplots(1, len(metrics), figsize=(panel_width * len(metrics), 3 + panel_width / 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for name, per_metric in curves.items():
            if metric in per_metric:
                by_lam = per_metric[metric]
                ax.plot(list(by_lam), list(by_lam.values()), marker="o", color=colour[name], label=name)
        ax.set_xlabel("λ")
        ax.set_title(metric)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6 if len(curves) > 4 else 8)
    fig.tight_layout()
    out = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return out


# per attribute: the paper's metrics λ should raise (sign +1) or lower (−1); an item group's exact match comes
# before them (`strength_metrics`: the first a row holds is the one used)
PAPER_STRENGTH = {
    "shape": (("iou", 1.0),),
    "appearance": (("dino", 1.0), ("gram", -1.0)),
    "style": (("dino", 1.0), ("gram", -1.0)),
}


def strength_metrics(attribute: str) -> tuple[tuple[str, float], ...]:
    """(metric, sign) pairs that measure `attribute`'s strength, best first: the exact match of the item group
    that scores it (`ostaf.groups`), then the paper's metrics."""
    exact = groups.strength(attribute)
    return (((exact.match, 1.0),) if exact else ()) + PAPER_STRENGTH[attribute]


TEXT = ("text_control", "clip_t")
KEEP_TEXT = 0.9  # the best λ keeps ≥ 90 % of the prompt-following it has at the smallest λ


def best_lambda(means: dict[float, dict[str, float]], attribute: str) -> tuple[float, str] | None:
    """(λ, metric): the λ with the strongest attribute among those whose text following stays ≥ KEEP_TEXT × its
    value at the smallest λ (the whole sweep when no text metric was computed); None when no metric is there."""
    lams = sorted(means)
    held = {k for m in means.values() for k in m}
    found = next(((name, sign) for name, sign in strength_metrics(attribute) if name in held), None)
    if found is None:
        return None
    name, sign = found
    text = next((t for t in TEXT if t in held), None)
    floor = KEEP_TEXT * means[lams[0]].get(text, 0.0) if text else None
    allowed = [lam for lam in lams if floor is None or means[lam].get(text, 0.0) >= floor] or lams[:1]

    def strength(lam: float) -> tuple[float, float]:  # ties go to the smaller λ (the least change to the model)
        return (sign * means[lam][name] if name in means[lam] else float("-inf"), -lam)

    return max(allowed, key=strength), name


def by_lambda(rows: list[dict]) -> dict[float, dict[str, float]]:
    """Metric means over prompts, per λ."""
    out: dict[float, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        for key, value in row.items():
            if key not in ("lam", "n") and isinstance(value, (int, float)) and not isinstance(value, bool):
                out[row["lam"]][key].append(value)
    return {lam: {k: float(np.mean(v)) for k, v in metrics.items()} for lam, metrics in sorted(out.items())}


BEST_LAM_NOTE = "best λ per item (the strongest attribute that keeps ≥ 90 % of the prompt-following of the smallest λ):"


def best_lambdas(rows: list[dict]) -> dict[str, tuple[float, str]]:
    """item → (its best λ, the metric that chose it), by `report.best_lambda` (items swept over one λ have none)."""
    by_item: dict[str, list[dict]] = {}
    for row in rows:
        by_item.setdefault(row["item"], []).append(row)
    found = {item: best_lambda(by_lambda(r), r[0]["attribute"]) for item, r in by_item.items() if _swept(r)}
    return {item: b for item, b in found.items() if b is not None}


def _swept(rows: list[dict]) -> bool:
    """More than one λ: a best λ means something."""
    return len({row["lam"] for row in rows}) > 1


NOT_COMPUTED = (
    "CLIP-T, DINO, Gram and IoU: n/a (no weights for them here, see `ostaf doctor`; `--metric-models tiny` "
    "computes them with random stand-ins, whose numbers mean nothing)"
)


def missing_paper_metrics(rows: list[dict]) -> bool:
    """True when no row holds any of the paper's metrics (they were not computed)."""
    paper = {m for ms in COLUMNS.values() for m in ms}
    return not any(m in row for row in rows for m in paper)


def plot_curves(rows: list[dict], path: str | Path) -> Path | None:
    """Metric vs λ, one panel per metric the rows hold (the paper's, then exact ones), one line per attribute;
    None when they hold none."""
    metrics = [m for m in table_metrics() if any(row.get(m) is not None for row in rows)]
    if not metrics:
        return None
    return plot_lambda_curves(lambda_curves(rows, lambda r: r["attribute"], metrics), metrics, path)
