"""Issue 17, point 2: does running the down and mid blocks without autograd speed up a decoder step?

    python benchmarks/no_grad_prefix.py                    # sd14-random, 256 px
    python benchmarks/no_grad_prefix.py --resolution 512 --steps 4

A decoder run with a confined (or frozen) token needs no gradient before the first up block. One
process, one training setup; the same step is timed with and without the forward hooks that switch
autograd off for the down and mid blocks, alternating step by step so that this machine's drift hits
both alike, and the gradients of one batch are compared bit for bit. Exit code 1 when the hooks do not
make the step at least 3 % faster (then it would not be worth keeping: training installs them where they
apply, `ostaf.train.prefix_needs_no_autograd`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ratios import alternating_medians, print_table, train_config  # noqa: E402

MIN_GAIN = 0.03


def install_hooks(unet) -> list:
    """The prefix as training installs it (`ostaf.train.run_without_autograd`)."""
    from ostaf.train import run_without_autograd

    return run_without_autograd([*unet.down_blocks, unet.mid_block])


def main() -> int:
    import torch

    from ostaf.allocator import tune_cpu_allocator
    from ostaf.train import denoising_loss, make_optimizer, optimizer_step, prepare, sample_batch

    tune_cpu_allocator()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sd14-random")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6, help="timed steps of each kind")
    parser.add_argument("--token-grad", default="confined", choices=("confined", "frozen"))
    args = parser.parse_args()
    variant = dict(part="decoder", trainable="lite")
    variant |= {"token_grad": "confined"} if args.token_grad == "confined" else {"train_token": False}
    setup = prepare(train_config(Path(tempfile.mkdtemp()), args.model, args.resolution, **variant))
    for hook in setup.prefix_hooks:  # training installs the prefix for this setup: measure without it first
        hook.remove()

    batch = sample_batch(setup, torch.Generator().manual_seed(0))
    grads = []
    for hooked in (False, True):
        handles = install_hooks(setup.pipe.unet) if hooked else []
        for p in setup.trainable:
            p.grad = None
        mse, reg, _ = denoising_loss(setup, *batch)
        (mse + setup.config.token_reg * reg).backward()
        grads.append([p.grad.clone() if p.grad is not None else None for p in setup.trainable])
        for handle in handles:
            handle.remove()
    identical = all(
        (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
        for a, b in zip(*grads, strict=True)
    )

    optimizer = make_optimizer(setup)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    generator = torch.Generator().manual_seed(0)
    installed: list = []

    def unhook() -> None:
        for handle in installed:
            handle.remove()
        installed.clear()

    def hook() -> None:
        unhook()
        installed.extend(install_hooks(setup.pipe.unet))

    step = partial(optimizer_step, setup, optimizer, scaler, generator)
    medians = alternating_medians(step, {"plain": unhook, "prefix": hook}, args.steps)
    unhook()
    plain, prefix = medians["plain"], medians["prefix"]
    rows = [
        {"step": f"decoder lite, token {args.token_grad}", "s_per_step": round(plain, 3)},
        {"step": "the same, down + mid blocks without autograd", "s_per_step": round(prefix, 3)},
    ]
    print_table(rows, f"{args.model} at {args.resolution} px, median of {args.steps} alternating steps each")
    gain = 1 - prefix / plain
    print(f"\nno-grad prefix: {gain:+.1%} step time; gradients bit-identical: {'yes' if identical else 'NO'}")
    return 0 if gain >= MIN_GAIN and identical else 1


if __name__ == "__main__":
    sys.exit(main())
