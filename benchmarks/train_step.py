"""Seconds per optimizer step and peak memory of OSTAF training, one configuration per process.

    python benchmarks/train_step.py --model sd14-random --resolution 256 --parts decoder encoder

Each configuration runs in its own subprocess so that its peak RSS is its own;
cost does not depend on weight values, so `sd14-random` stands in for SD-1.4.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(model: str, part: str, resolution: int, steps: int, trainable: str, grad_accum: int) -> dict:
    import torch

    from ostaf.config import TrainConfig
    from ostaf.demo import synthetic_reference
    from ostaf.train import make_optimizer, optimizer_step, prepare

    torch.set_num_threads(torch.get_num_threads())
    tmp = Path(tempfile.mkdtemp())
    synthetic_reference("appearance").save(tmp / "ref.png")
    config = TrainConfig(
        image=str(tmp / "ref.png"),
        class_name="ball",
        model=model,
        part=part,
        resolution=resolution,
        trainable=trainable,
        grad_accum=grad_accum,
        lr=1e-5,
        out=str(tmp / "run"),
        device="cpu",
        segment=False,
        steps=steps,
    )
    setup = prepare(config)
    optimizer = make_optimizer(setup)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer_step(setup, optimizer, scaler, generator)
        times.append(time.perf_counter() - start)
    trainable_params = sum(p.numel() for p in setup.trainable)
    return {
        "model": model,
        "part": part,
        "resolution": resolution,
        "trainable": trainable,
        "grad_accum": grad_accum,
        "first_step_s": round(times[0], 3),
        "s_per_step": round(statistics.median(times[1:] or times), 3),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "trainable_params": trainable_params,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--parts", nargs="+", default=["decoder", "encoder"])
    parser.add_argument("--resolution", type=int, default=0, help="px; 0 = the model's native size")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps; the first is warm-up")
    parser.add_argument("--trainable", default="lite", choices=["lite", "paper"])
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.model, args.one, args.resolution, args.steps, args.trainable, args.grad_accum)))
        return
    rows = []
    for part in args.parts:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            part,
            "--model",
            args.model,
            "--resolution",
            str(args.resolution),
            "--steps",
            str(args.steps),
            "--trainable",
            args.trainable,
            "--grad-accum",
            str(args.grad_accum),
        ]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
