"""Shared by the benchmarks: the reference and training setup they measure, print a table, check ratio
targets (10 % slack), time variants of one step side by side, and the exit code."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

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


def world_reference(folder: Path) -> Path:
    """The reference every benchmark trains on (Attribute World sample 0), written to `folder/ref.png`."""
    from PIL import Image

    from ostaf.world import sample

    path = Path(folder) / "ref.png"
    Image.fromarray(sample(0).image).save(path)
    return path


def train_config(folder: Path, model: str, resolution: int, **variant):
    """One image, batch 1, no SAM, on the CPU, outputs under `folder`; `variant` picks what is measured."""
    from ostaf.config import TrainConfig

    values = dict(class_name="ball", grad_accum=1, lr=1e-5, device="cpu", segment=False, augment_bank=1)
    return TrainConfig(
        image=str(world_reference(folder)), model=model, resolution=resolution, out=str(Path(folder) / "run"),
        **(values | variant),
    )  # fmt: skip


def alternating_medians(step: Callable[[], object], variants: dict[str, Callable[[], None]], rounds: int) -> dict:
    """The median time of `step` under each variant (`variants[name]()` switches to it), the variants taken in
    turn for `rounds` rounds after one warm-up round, so this machine's drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(rounds + 1):
        for name, switch in variants.items():
            switch()
            start = time.perf_counter()
            step()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(spent) for name, spent in times.items()}
