"""One compact table from several world experiments (e.g. named / seen / novel): per attribute and method,
the attribute's match, its exact score, the gap closed, text control and λ control.

    python benchmarks/summarise_world.py benchmarks/results/world-v3/test-{named,seen,novel}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ostaf.world.references import STRENGTH


def cell(row: dict, key: str, interval: bool = False) -> str:
    """The value, with its 95 % bootstrap interval over references where asked and present."""
    if key not in row:
        return "–"
    value = row[key]
    text = f"{value:.2f}" if isinstance(value, float) else str(value)
    low_high = row.get(f"{key}_ci") if interval else None
    return f"{text} [{low_high[0]:.2f}, {low_high[1]:.2f}]" if low_high and low_high[0] != low_high[1] else text


def summarise(folders: list[Path]) -> str:
    lines = [
        "| kind | attribute | method | λ | match | score | gap closed | text control | lam_rho | text_drop |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for folder in folders:
        report = json.loads((folder / "results.json").read_text())
        kind = report["config"].get("kind", "named")
        for attribute in ("shape", "appearance", "style"):
            for row in (r for r in report["table"] if r["attribute"] == attribute):
                match, score = STRENGTH[attribute].match, STRENGTH[attribute].score
                keys = ("lam", match, score, "gap_closed", "text_control", "lam_rho", "text_drop")
                cells = [cell(row, k, interval=k in (match, "gap_closed")) for k in keys]
                lines.append(f"| {kind} | {attribute} | {row['method']} | " + " | ".join(cells) + " |")
        for row in (r for r in report["table"] if r["attribute"] == "shape+appearance"):
            both = f"{cell(row, 'shape_match')} / {cell(row, 'appearance_match')}"
            head = f"| {kind} | shape + appearance | {row['method']} | {cell(row, 'lam')}"
            lines.append(f"{head} | {both} | – | – | – | – | – |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="experiment output folders (each with results.json)")
    print(summarise(parser.parse_args(argv).folders))


if __name__ == "__main__":
    main()
