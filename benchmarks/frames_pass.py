"""Issue 28: fewer, larger U-Net passes per training step — how much faster are the world recipes' steps?

    python benchmarks/frames_pass.py                       # the views recipe (shape) on the world model, 64 px
    python benchmarks/frames_pass.py --recipe disentangled # the token recipe (appearance, style): no views
    python benchmarks/frames_pass.py --model sd14-random --resolution 256 --steps 4

Two changes, each exact: the `views` recipe's captioned views join the reference's U-Net pass (one call of batch 2
instead of two of batch 1) wherever no mechanism's forward belongs to the reference alone
(`Mechanism.shares_pass`), and `--fused-accum` (the world recipe) runs a step's `--grad-accum` micro-batches in one
pass. One process, one training setup, the step timed under each variant in turn (views apart: a mechanism that
keeps the pass to the reference is added, as attention binding would), and the loss and gradients of one step
compared across the variants. Exit code 1 when the shipped variant is not at least 10 % faster than the first
row or the variants disagree.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ratios import alternating_medians, print_table, train_config  # noqa: E402

MIN_GAIN = 0.10


def main() -> int:
    import torch

    from ostaf.allocator import tune_cpu_allocator
    from ostaf.mechanisms.base import Mechanism
    from ostaf.recipes import WORLD, get_recipe
    from ostaf.train import make_optimizer, optimizer_step, prepare

    class ReferenceOnlyPass(Mechanism):
        """Does nothing but keep the U-Net pass to the reference's samples: the views get a pass of their own."""

        def shares_pass(self, setup) -> bool:
            return False

    tune_cpu_allocator()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="views", choices=("views", "disentangled"))
    parser.add_argument("--model", default="attribute-world")
    parser.add_argument("--resolution", type=int, default=0, help="0: the model's native size")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each variant")
    args = parser.parse_args()
    recipe = get_recipe(args.recipe)
    attribute = recipe.attributes[0] if recipe.attributes else "appearance"
    variant = dict(attribute=attribute, class_name="object", grad_accum=2) | WORLD.train | recipe.train
    variant = {k: v for k, v in variant.items() if k not in ("steps", "checkpoint_every")}  # --recipe world …
    config = train_config(Path(tempfile.mkdtemp()), args.model, args.resolution, **variant)
    setup = prepare(config)
    apart = ReferenceOnlyPass()
    views = bool(config.views)

    def switch(joined: bool, fused: bool) -> None:
        setup.mechanisms[:] = [m for m in setup.mechanisms if m is not apart] + ([] if joined else [apart])
        setup.config = replace(config, fused_accum=fused)

    if views:
        variants = {
            "views apart, micro-batches accumulated": partial(switch, False, False),
            "views joined, micro-batches accumulated": partial(switch, True, False),
            "views joined, micro-batches fused (shipped)": partial(switch, True, True),
        }
    else:
        variants = {
            "micro-batches accumulated": partial(switch, True, False),
            "micro-batches fused (shipped)": partial(switch, True, True),
        }

    def one_step() -> tuple[float, list[torch.Tensor]]:
        """One step's loss and the gradient it applies (SGD at rate 1 on a copy of the trainables)."""
        params = [p for p in setup.trainable if p.requires_grad]
        before = [p.detach().clone() for p in params]
        loss = optimizer_step(setup, torch.optim.SGD(params, lr=1.0), scaler, torch.Generator().manual_seed(0))
        grads = [b - p.detach() for b, p in zip(before, params, strict=True)]
        with torch.no_grad():
            for p, b in zip(params, before, strict=True):
                p.copy_(b)
        return loss, grads

    scaler = torch.amp.GradScaler("cuda", enabled=False)
    checked = {}
    for name, apply in variants.items():
        apply()
        checked[name] = one_step()
    first_loss, first_grads = next(iter(checked.values()))
    loss_error = max(abs(loss - first_loss) / abs(first_loss) for loss, _ in checked.values())
    # per trained tensor, ‖a − b‖ / ‖b‖: float summation order (a batch of another size picks other kernels) moves
    # single elements of a deep model's gradient by more than the whole does
    grad_error = max(
        float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-12))
        for _, grads in checked.values()
        for a, b in zip(grads, first_grads, strict=True)
    )
    agree = loss_error <= 1e-5 and grad_error <= 1e-3

    optimizer = make_optimizer(setup)
    medians = alternating_medians(
        partial(optimizer_step, setup, optimizer, scaler, torch.Generator().manual_seed(0)), variants, args.steps
    )
    size = setup.latent_size[-1] * setup.pipe.vae_scale_factor
    what = f"{args.recipe} recipe ({config.trainable}{f', {config.views} views' if views else ''})"
    rows = [{"step": f"{what}: {name}", "s_per_step": round(spent, 4)} for name, spent in medians.items()]
    print_table(rows, f"{args.model} at {size} px, grad_accum {config.grad_accum}, median of {args.steps} in turn")
    baseline, shipped = next(iter(medians.values())), list(medians.values())[-1]
    gain = 1 - shipped / baseline
    print(
        f"\nshipped saves {gain:.1%} of the first row's step time; across the variants the loss differs by at most "
        f"{loss_error:.1e} and the gradients by {grad_error:.1e} (relative): {'agree' if agree else 'DISAGREE'}"
    )
    return 0 if gain >= MIN_GAIN and agree else 1


if __name__ == "__main__":
    sys.exit(main())
