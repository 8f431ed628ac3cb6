"""A world experiment's table over part of its λ sweep: the λ-control columns (`lam_rho`, `text_drop`) of the
rows whose λ lies in [low, high] — e.g. the knob's own range [0, 1] of a sweep that also extrapolates to 1.5.

    python benchmarks/lam_range.py benchmarks/results/world-v3/ablation/views-band400-test-seen-shape --lams 0 1

`source`: an experiment's `--out` folder (its `rows.json`, else its jobs' `runs/<method>/<reference>/rows.json`)
or a rows file. The metric columns are read at `high`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ostaf.world.table import summarise, table_markdown


def load_rows(source: Path) -> list[dict]:
    """The scored rows of an experiment folder or a rows file (a job's file holds them under "rows")."""
    files = [source] if source.is_file() else [source / "rows.json"]
    if not files[0].exists():
        files = sorted(source.glob("runs/*/*/rows.json"))
    if not files:
        raise SystemExit(f"no rows under {source}: give an experiment's --out folder or its rows.json")
    rows: list[dict] = []
    for path in files:
        data = json.loads(path.read_text())
        rows.extend(data["rows"] if isinstance(data, dict) else data)
    return rows


def in_range(rows: list[dict], low: float, high: float) -> list[dict]:
    return [r for r in rows if low <= r["lam"] <= high]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="an experiment's --out folder or a rows.json")
    parser.add_argument("--lams", nargs=2, type=float, default=(0.0, 1.0), metavar=("LOW", "HIGH"))
    args = parser.parse_args(argv)
    low, high = args.lams
    rows = in_range(load_rows(args.source), low, high)
    if not rows:
        raise SystemExit(f"no row has λ in [{low:g}, {high:g}]")
    print(f"λ in [{low:g}, {high:g}]: {sorted({r['lam'] for r in rows})}\n")
    print(table_markdown(summarise(rows, lam=high)))


if __name__ == "__main__":
    main()
