"""Where one OSTAF training step's time goes: hypernetwork (ΔW), forward, backward, optimizer.

    python benchmarks/profile_step.py                                  # sd14-random, 256 px, decoder lite
    python benchmarks/profile_step.py --part encoder --trainable paper --token-grad confined

Each phase is timed on its own (median over `--steps` steps after a warm-up), and the top operators
of one step are listed from `torch.profiler`, so the table says what to optimise next.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ratios import print_table, train_config  # noqa: E402


def main() -> int:
    import torch

    from ostaf.allocator import tune_cpu_allocator
    from ostaf.train import denoising_loss, make_optimizer, prepare, sample_batch

    tune_cpu_allocator()  # as the `ostaf` command runs

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sd14-random")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--part", default="decoder")
    parser.add_argument("--trainable", default="lite")
    parser.add_argument("--token-grad", default="full")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=12, help="operators listed from the profiler")
    args = parser.parse_args()

    config = train_config(
        Path(tempfile.mkdtemp()), args.model, args.resolution,
        part=args.part, trainable=args.trainable, token_grad=args.token_grad, token_init="word",
    )  # fmt: skip
    setup = prepare(config)
    optimizer = make_optimizer(setup)
    generator = torch.Generator().manual_seed(0)
    # OSTAF's processors hold the hypernetwork; blocks, unet and token runs have no adapter, LoRA has peft's layers
    processors = [p for p in getattr(setup.adapter, "processors", {}).values() if hasattr(p, "offsets")]

    def step(phases: dict[str, float] | None) -> None:
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            if phases is not None:
                phases[name] = phases.get(name, 0.0) + now - clock
            clock = now

        with torch.no_grad():  # ΔW of every targeted projection, as the forward computes it
            for proc in processors:
                for name in proc.offsets:
                    proc.offsets[name]()
        lap("hypernetwork ΔW (no grad, for reference)")
        mse, reg, _ = denoising_loss(setup, *sample_batch(setup, generator))
        loss = mse + config.token_reg * reg
        lap("forward (incl. ΔW with grad)")
        loss.backward()
        lap("backward")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lap("optimizer")

    step(None)  # warm-up
    runs = []
    for _ in range(args.steps):
        phases: dict[str, float] = {}
        step(phases)
        runs.append(phases)
    medians = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    total = sum(v for k, v in medians.items() if not k.startswith("hypernetwork"))
    rows = [
        {"phase": k, "seconds": round(v, 3), "share of step": f"{100 * v / total:.0f} %"} for k, v in medians.items()
    ]
    print_table(rows, f"{args.model} {args.resolution} px, {args.part} {args.trainable}, token grad {args.token_grad}")

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(None)
    print(f"\ntop {args.top} operators of one step (self CPU time)\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
