"""Shared by the benchmarks: print a table, check ratio targets (10 % slack), and the exit code."""

from __future__ import annotations

SLACK = 1.1  # a ratio fails when it misses its target by more than 10 %


def print_table(rows: list[dict], title: str) -> None:
    keys = list(rows[0])
    print(f"\n{title}\n")
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row.get(k, "–")) for k in keys) + " |")


def check_ratios(rows: dict[str, dict], targets: list[tuple[str, str, str, float]]) -> int:
    """Print each `(numerator, denominator, metric, target)` ratio that was measured; 1 if any misses."""
    results = []
    for num, den, metric, target in targets:
        if num in rows and den in rows and rows[den][metric]:
            ratio = rows[num][metric] / rows[den][metric]
            results.append((f"{num} / {den} ({metric})", ratio, target, ratio <= target * SLACK))
    if results:
        print("\n| ratio | measured | target | ok |\n|---|---|---|---|")
        for label, ratio, target, ok in results:
            print(f"| {label} | {ratio:.3f} | ≤ {target} | {'yes' if ok else 'NO'} |")
    return 0 if all(ok for *_, ok in results) else 1
