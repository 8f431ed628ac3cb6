"""Issue 28: the views (and prior images) in the reference's U-Net pass — how much faster is a shape step?

    python benchmarks/frames_pass.py                       # the views recipe on the world model, its 64 px
    python benchmarks/frames_pass.py --model sd14-random --resolution 256 --steps 4

The `views` recipe adds a batch of captioned views to every micro-step. They used to run in a U-Net pass of their
own after the reference's (two calls of batch 1); they now join it (one call of batch 2) wherever no mechanism's
forward belongs to the reference alone (`Mechanism.shares_pass`). One process, one training setup: the same
optimiser step is timed joined and apart (apart: a mechanism that keeps the pass to the reference is added, as
attention binding would), alternating step by step so this machine's drift hits both alike, and one micro-batch's
loss and gradients are compared. Exit code 1 when joining is not at least 10 % faster or the two disagree.
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

MIN_GAIN = 0.10


def main() -> int:
    import torch

    from ostaf.allocator import tune_cpu_allocator
    from ostaf.mechanisms.base import Mechanism
    from ostaf.recipes import VIEWS, WORLD
    from ostaf.train import denoising_loss, make_optimizer, mechanism_frames, optimizer_step, prepare, sample_batch

    class ReferenceOnlyPass(Mechanism):
        """Does nothing but keep the U-Net pass to the reference's samples: the views get a pass of their own."""

        def shares_pass(self, setup) -> bool:
            return False

    tune_cpu_allocator()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="attribute-world")
    parser.add_argument("--resolution", type=int, default=0, help="0: the model's native size")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each kind")
    args = parser.parse_args()
    variant = dict(attribute="shape", class_name="object") | WORLD.train | VIEWS.train  # --recipe world views
    variant = {k: v for k, v in variant.items() if k not in ("steps", "checkpoint_every")}
    config = train_config(Path(tempfile.mkdtemp()), args.model, args.resolution, **variant)
    setup = prepare(config)
    apart = ReferenceOnlyPass()

    def micro_batch(joined: bool) -> tuple[float, list[torch.Tensor]]:
        setup.mechanisms[:] = [m for m in setup.mechanisms if m is not apart] + ([] if joined else [apart])
        generator = torch.Generator().manual_seed(0)
        batch = sample_batch(setup, generator)
        losses = denoising_loss(setup, *batch, frames=mechanism_frames(setup, batch, generator))
        total = losses.mse + setup.config.token_reg * losses.reg + losses.frames
        params = [p for p in setup.trainable if p.requires_grad]
        return total.item(), [g.clone() for g in torch.autograd.grad(total, params)]

    (loss_joined, grads_joined), (loss_apart, grads_apart) = micro_batch(True), micro_batch(False)
    pairs = zip(grads_joined, grads_apart, strict=True)
    grad_error = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in pairs)
    agree = abs(loss_joined - loss_apart) <= 1e-5 * abs(loss_apart) and grad_error <= 1e-3

    optimizer = make_optimizer(setup)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    generator = torch.Generator().manual_seed(0)
    times: dict[bool, list[float]] = {True: [], False: []}
    for index in range(2 * args.steps + 2):  # two warm-up steps, then alternating
        joined = bool(index % 2)
        setup.mechanisms[:] = [m for m in setup.mechanisms if m is not apart] + ([] if joined else [apart])
        start = time.perf_counter()
        optimizer_step(setup, optimizer, scaler, generator)
        if index >= 2:
            times[joined].append(time.perf_counter() - start)
    own, shared = statistics.median(times[False]), statistics.median(times[True])
    size = setup.latent_size[-1] * setup.pipe.vae_scale_factor
    rows = [
        {"step": f"views recipe ({config.trainable}, {config.views} views), views in a pass of their own",
         "s_per_step": round(own, 4)},
        {"step": "the same, views in the reference's pass (shipped)", "s_per_step": round(shared, 4)},
    ]  # fmt: skip
    print_table(rows, f"{args.model} at {size} px, grad_accum {config.grad_accum}, median of {args.steps} alternating")
    gain = 1 - shared / own
    print(
        f"\njoining saves {gain:.1%} of the step time; loss {loss_joined:.6g} vs {loss_apart:.6g}, "
        f"largest relative gradient difference {grad_error:.1e} ({'agree' if agree else 'DISAGREE'})"
    )
    return 0 if gain >= MIN_GAIN and agree else 1


if __name__ == "__main__":
    sys.exit(main())
