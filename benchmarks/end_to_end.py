"""End to end on one reference: `ostaf preprocess` → `ostaf train` → `ostaf generate` (λ sweep) as a user runs
them, against the work they cannot avoid — measured side by side in one run.

    python benchmarks/end_to_end.py                 # tiny, 40 steps, 3 λ × 2 seeds
    python benchmarks/end_to_end.py --model attribute-world --steps 150

A regression guard for the pipeline's own overhead (imports, model loads, file I/O, checkpoints):

    floor = 3 × (a bare `import ostaf.train, ostaf.generate` process) + the training loop and the
            denoising of the same job timed in one warm process
    e2e   = the three CLI calls' wall time

and `e2e / floor` must stay ≤ the target (exit code 1 beyond +10 %).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ratios import check_ratios, print_table, world_reference  # noqa: E402

TARGETS = [("e2e-cli", "floor", "seconds", 1.35)]
PROMPT = "a vase in the appearance of *a"
OSTAF = str(Path(sys.executable).with_name("ostaf"))


def _wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def cli_run(tmp: Path, ref: Path, args: argparse.Namespace) -> dict[str, float]:
    pre, ckpt, images = tmp / "pre", tmp / "ckpt", tmp / "images"
    common = ["--model", args.model, "--steps", str(args.steps), "--no-segment", "--token-init", "word"]
    return {
        "preprocess": _wall(
            [
                OSTAF,
                "preprocess",
                "--image",
                str(ref),
                "--out",
                str(pre),
                "--no-segment",
                "--resolution",
                str(args.resolution),
            ]
        ),
        "train": _wall(
            [
                OSTAF,
                "train",
                "--image",
                str(pre),
                "--class-name",
                "ball",
                "--out",
                str(ckpt),
                "--checkpoint-every",
                "0",
                "--lr",
                "1e-4",
                *common,
            ]
        ),
        "generate": _wall(
            [
                OSTAF,
                "generate",
                "--ckpt",
                str(ckpt),
                "--prompt",
                PROMPT,
                "--lam",
                "0",
                "0.5",
                "1",
                "--seeds",
                "0",
                "1",
                "--num-steps",
                str(args.num_steps),
                "--out",
                str(images),
            ]
        ),
    }


def warm_compute(tmp: Path, ref: Path, args: argparse.Namespace) -> dict[str, float]:
    """The same training loop and denoising, timed inside one process with everything loaded."""
    import torch

    from ostaf.allocator import tune_cpu_allocator
    from ostaf.config import TrainConfig
    from ostaf.generate import sweep
    from ostaf.train import make_optimizer, optimizer_step, prepare

    tune_cpu_allocator()  # as the `ostaf` command it is compared with

    config = TrainConfig(
        image=str(ref),
        class_name="ball",
        model=args.model,
        out=str(tmp / "warm"),
        steps=args.steps,
        lr=1e-4,
        segment=False,
        token_init="word",
        resolution=args.resolution,
    )
    setup = prepare(config)
    optimizer = make_optimizer(setup)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(args.steps):
        optimizer_step(setup, optimizer, scaler, generator)
    train = time.perf_counter() - start
    setup.pipe.unet.eval()
    start = time.perf_counter()
    with torch.no_grad():
        sweep(
            setup.pipe,
            [setup.adapter],
            PROMPT.replace("*a", "ball"),
            [0.0, 0.5, 1.0],
            [0, 1],
            args.num_steps,
            progress=False,
        )
    return {"train-loop": train, "denoise": time.perf_counter() - start}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--num-steps", type=int, default=10, help="denoising steps of the sweep")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    walls, floors, phases = [], [], []
    for round_ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            ref = world_reference(tmp)
            imports = _wall([sys.executable, "-c", "import ostaf.train, ostaf.generate"])
            cli = cli_run(tmp, ref, args)
            warm = warm_compute(tmp, ref, args)
            walls.append(sum(cli.values()))
            floors.append(3 * imports + sum(warm.values()))
            phases.append(cli | warm | {"import": imports})
        print(f"round {round_ + 1}/{args.rounds}: e2e {walls[-1]:.1f} s, floor {floors[-1]:.1f} s", file=sys.stderr)
    median = {k: round(statistics.median(p[k] for p in phases), 2) for k in phases[0]}
    print_table(
        [{"phase": k, "seconds": v} for k, v in median.items()],
        f"{args.model}, {args.steps} steps, 3 λ × 2 seeds × {args.num_steps} denoising steps (median of {args.rounds})",
    )
    rows = {
        "e2e-cli": {"config": "e2e-cli", "seconds": statistics.median(walls)},
        "floor": {"config": "floor", "seconds": statistics.median(floors)},
    }
    print_table(
        [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()} for r in rows.values()],
        "end to end vs floor",
    )
    return check_ratios(rows, TARGETS)


if __name__ == "__main__":
    sys.exit(main())
