"""The world experiment's table: per (method, attribute) each metric's mean over references with a bootstrap
interval, the λ-control columns (`lam_rho`, `text_drop`), the gap closed on unnamed references, and the curves."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ostaf.report import lambda_curves, plot_lambda_curves, to_markdown
from ostaf.stats import bootstrap_interval, spearman
from ostaf.world.methods import METHODS, is_compose
from ostaf.world.references import STRENGTH, gap_closed

METRICS = (
    "shape_iou",
    "shape_match",
    "appearance_dist",
    "appearance_match",
    "style_dist",
    "style_match",
    "text_control",
    "leakage",
    "gap_closed",
)
# rows no training made: the wrong-word average, the nearest-word floor, the words prompt, the VAE's limit
UNTRAINED = ("words", "chance", "floor", "limit")
# the continuous metric λ should raise (sign +1) or lower (-1), per attribute: `lam_rho` follows it
LAMBDA_METRIC = {attribute: (s.score, s.sign) for attribute, s in STRENGTH.items()}
COLUMNS = {  # the table's columns per attribute, the attribute's match first
    "shape": ("shape_match", "shape_iou", "gap_closed", "text_control", "leakage"),
    "appearance": ("appearance_match", "appearance_dist", "gap_closed", "text_control", "leakage"),
    "style": ("style_match", "style_dist", "gap_closed", "text_control", "leakage"),
    "shape+appearance": ("shape_match", "appearance_match", "shape_iou", "appearance_dist"),
}
CONTROL = ("lam_rho", "text_drop")


LamOf = Callable[[str, str], float]  # (method, attribute) → the λ its table row reads


def per_reference(rows: list[dict], lam_of: LamOf) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """(method, attribute) → reference → each metric's mean over seeds at the method's λ (any λ for untrained
    rows)."""
    groups: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for row in rows:
        if row["method"] in UNTRAINED or row["lam"] == lam_of(row["method"], row["attribute"]):
            for metric in (*METRICS, "train_seconds"):
                if row.get(metric) is not None:
                    groups[(row["method"], row["attribute"])][row["reference"]][metric].append(row[metric])
    return {
        key: {ref: {m: float(np.mean(v)) for m, v in per.items()} for ref, per in by_ref.items()}
        for key, by_ref in groups.items()
    }


def controllability(rows: list[dict]) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """(method, attribute) → reference → `lam_rho` (Spearman of λ with the attribute metric, signed so
    that + means λ strengthens the attribute) and `text_drop` (text control at min λ minus at max λ)."""
    sweeps: dict = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["method"] not in UNTRAINED and not is_compose(row["method"]):
            sweeps[(row["method"], row["attribute"])][row["reference"]].append(row)
    out: dict = defaultdict(dict)
    for key, by_ref in sweeps.items():
        metric, sign = LAMBDA_METRIC[key[1]]
        for ref, members in by_ref.items():
            lams = sorted({m["lam"] for m in members})
            if len(lams) < 2:
                continue
            text = {lam: np.mean([m["text_control"] for m in members if m["lam"] == lam]) for lam in lams}
            out[key][ref] = {
                "lam_rho": spearman([m["lam"] for m in members], [sign * m[metric] for m in members]),
                "text_drop": float(text[lams[0]] - text[lams[-1]]),
            }
    return out


def summarise(rows: list[dict], lam: float | LamOf = 1.0) -> list[dict]:
    """One row per (method, attribute) at its λ (`lam`, or `lam(method, attribute)`): each metric's mean over
    references (seeds averaged first) with its 95 % bootstrap interval over references (`<metric>_ci`), and the
    λ-control columns."""
    lam_of = lam if callable(lam) else (lambda method, attribute: lam)
    control = controllability(rows)
    table = []
    for (method, attribute), by_ref in per_reference(rows, lam_of).items():
        entry: dict[str, Any] = {"method": method, "attribute": attribute, "n": len(by_ref)}
        if method not in UNTRAINED:
            entry["lam"] = lam_of(method, attribute)
        per_ref = list(by_ref.values()) + [control.get((method, attribute), {}).get(r, {}) for r in by_ref]
        for metric in (*METRICS, *CONTROL):
            values = [v[metric] for v in per_ref if metric in v]
            if values:
                interval = bootstrap_interval(values)
                entry[metric] = round(interval.mean, 3)
                entry[f"{metric}_ci"] = [round(interval.low, 3), round(interval.high, 3)]
        seconds = [v["train_seconds"] for v in by_ref.values() if v.get("train_seconds")]
        if seconds:
            entry["train_s"] = round(float(np.mean(seconds)), 1)
        table.append(entry)
    order = ["chance", "floor", "words", *METHODS, "limit"]
    return sorted(
        table,
        key=lambda e: (order.index(e["method"]) if e["method"] in order else len(order), e["method"], e["attribute"]),
    )


def table_markdown(table: list[dict]) -> str:
    """One Markdown table per attribute; a cell is `mean [95 % interval]`."""

    def cell(entry: dict, key: str) -> str:
        if key not in entry:
            return "–"
        low_high = entry.get(f"{key}_ci")
        if low_high is None or low_high[0] == low_high[1]:
            return f"{entry[key]:.3g}"
        return f"{entry[key]:.3g} [{low_high[0]:.2g}, {low_high[1]:.2g}]"

    parts = []
    for attribute, columns in COLUMNS.items():
        entries = [e for e in table if e["attribute"] == attribute]
        if not entries:
            continue
        keys = ["method", "n", "lam", *columns, *CONTROL, "train_s"]
        plain = ("method", "n", "lam", "train_s")
        rows = [{k: (e[k] if k in plain and k in e else cell(e, k)) for k in keys} for e in entries]
        parts.append(f"### {attribute}\n\n{to_markdown(rows, keys)}")
    return "\n".join(parts) + (
        "\n`lam`: the λ of a trained method's row; `words`: the base model told the attribute in words; "
        "`chance`: an answer with a wrong attribute, averaged over all of them (exact, by rendering); unnamed "
        "references (`--kind seen|novel`): `words` names the nearest word, `floor` is that word rendered exactly, "
        "`limit` the reference through the model's VAE, `gap_closed` = (score − floor) / (limit − floor). `[a, b]`: "
        "95 % bootstrap interval over references. `lam_rho`: Spearman correlation of λ with the attribute metric "
        "over the sweep (+1: λ strengthens the attribute); `text_drop`: text control at the smallest λ minus at "
        "the largest.\n"
    )


def curves_of(rows: list[dict]) -> dict[str, dict[str, dict[float, float]]]:
    """method/attribute → metric → λ → mean (the `words` ceiling has no λ)."""
    return lambda_curves(rows, lambda r: None if r["method"] == "words" else f"{r['method']}/{r['attribute']}", METRICS)


def plot_curves(curves: dict, path: Path) -> Path:
    shown = {name: c for name, c in curves.items() if not name.startswith(("token", "finetune"))}  # λ does nothing
    return plot_lambda_curves(shown, METRICS, path, panel_width=4.5)


def with_gap_closed(rows: list[dict], bounds: list[dict]) -> list[dict]:
    """Each row of an unnamed reference with `gap_closed` (`references.gap_closed`) where it has a gap."""
    ends: dict[str, dict[str, float]] = defaultdict(dict)
    for row in bounds:
        metric = LAMBDA_METRIC[row["attribute"]][0]
        ends[row["reference"]][row["method"]] = row[metric]
    out = []
    for row in rows:
        end = ends.get(row["reference"])
        if end is None or is_compose(row["method"]) or row["method"] == "chance":
            out.append(row)
            continue
        closed = gap_closed(row["attribute"], row[LAMBDA_METRIC[row["attribute"]][0]], end["floor"], end["limit"])
        out.append(row | ({"gap_closed": closed} if closed is not None else {}))
    return out
