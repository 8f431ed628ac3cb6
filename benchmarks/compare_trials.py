"""An option on and off, trial by trial: two or more searches' trials.json side by side (an ablation's table).

    python benchmarks/compare_trials.py benchmarks/results/world-v3/tuning/trials.json \
        benchmarks/results/world-v3/ablation/prior-seen/trials.json --pair finetune=finetune+prior \
        --pair lora=lora+prior --pair ostaf-lite=lite+prior

Each row is one (attribute, lr, steps) trial both methods of a pair ran, at λ = 1 (`--lam`): the attribute's
continuous score (`metric`: shape IoU, the negated appearance / style distance: higher is better), its match
and the text control, for the method without the option and with it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def trials(paths: list[Path]) -> dict[tuple, dict]:
    """(method, attribute, lr, steps, λ) → the trial's row, over every file."""
    rows: dict[tuple, dict] = {}
    for path in paths:
        for row in json.loads(path.read_text()):
            rows[(row["method"], row["attribute"], row["lr"], row["steps"], row["lam"])] = row
    return rows


def compare(rows: dict[tuple, dict], pairs: list[tuple[str, str]], lam: float) -> str:
    lines = [
        "| attribute | lr | steps | method | metric off → on | match off → on | text off → on |",
        "|---|---|---|---|---|---|---|",
    ]
    for off, on in pairs:
        for (method, attribute, lr, steps, row_lam), base in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0])):
            with_option = rows.get((on, attribute, lr, steps, row_lam))
            if method != off or row_lam != lam or with_option is None:
                continue
            cells = [f"{base[k]:.2f} → {with_option[k]:.2f}" for k in ("metric", "match", "text")]
            lines.append(f"| {attribute} | {lr:g} | {steps} | {off} vs {on} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trials", nargs="+", type=Path, help="trials.json files of benchmarks/tune_world.py")
    parser.add_argument("--pair", action="append", required=True, help="OFF=ON: a method without and with an option")
    parser.add_argument("--lam", type=float, default=1.0, help="the λ of the rows compared")
    args = parser.parse_args(argv)
    pairs = [tuple(p.split("=", 1)) for p in args.pair]
    print(compare(trials(args.trials), pairs, args.lam))


if __name__ == "__main__":
    main()
