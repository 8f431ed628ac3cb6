"""Train-step cost of OSTAF against forward-only, full fine-tuning and LoRA, measured side by side.

    python benchmarks/train_step.py                       # sd14-random, 256 px, the guarded rows (MAIN)
    python benchmarks/train_step.py --resolution 512
    python benchmarks/train_step.py --only ostaf-decoder-lite ostaf-decoder-lite+dual-path   # any rows
    python benchmarks/train_step.py --model tiny --steps 6 --only lora-decoder ostaf-decoder-lite
    python benchmarks/train_step.py --model sdxl-random --resolution 512 --steps 2 --only forward \
        ostaf-decoder-lite-confined-hyper16 lora-decoder-confined ostaf-decoder-lite-hyper16 lora-decoder \
        ostaf-encoder-lite-hyper16 ostaf-style-module-lite-confined-hyper16   # SDXL: decoder, encoder, LoRA

One micro-step = forward + backward (+ optimizer step) on one 1-image batch; the median over
`--steps` steps after one warm-up step. Each configuration runs in its own process, so its peak
RSS is its own. The ratio table is checked against the targets; the exit code is 1 when a ratio
misses its target by more than 10 %. Cost does not depend on weight values, so `sd14-random`
stands in for SD-1.4 and `sdxl-random` for SDXL-base (2.6 B-parameter U-Net, two text encoders).
`trainable_state_gb` is what training keeps beside the frozen model: every trainable
fp32 parameter with its gradient and AdamW's two moments.
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

sys.path.insert(0, str(Path(__file__).parent))
from ratios import check_ratios, print_table, train_config  # noqa: E402

OSTAF = {
    "ostaf-decoder-lite": dict(part="decoder", trainable="lite"),
    "ostaf-decoder-lite-confined": dict(part="decoder", trainable="lite", token_grad="confined"),
    "ostaf-decoder-lite-frozen-token": dict(part="decoder", trainable="lite", train_token=False),
    "ostaf-encoder-lite": dict(part="encoder", trainable="lite"),
    "ostaf-decoder-paper": dict(part="decoder", trainable="paper"),
    # --hyper-rank: the hypernetwork's out×out and in×in matrices as rank-R factors
    "ostaf-decoder-lite-confined-hyper64": dict(part="decoder", trainable="lite", token_grad="confined", hyper_rank=64),
    "ostaf-decoder-lite-confined-hyper16": dict(part="decoder", trainable="lite", token_grad="confined", hyper_rank=16),
    # SDXL (the full-rank hypernetwork of its decoder is 0.8 B parameters, so there the rows are rank 16)
    "ostaf-decoder-lite-hyper16": dict(part="decoder", trainable="lite", hyper_rank=16),
    "ostaf-encoder-lite-hyper16": dict(part="encoder", trainable="lite", hyper_rank=16),
    # B-LoRA's style module alone (SDXL's up_blocks.0.attentions.1)
    "ostaf-style-module-lite-confined-hyper16": dict(
        targets="up_blocks.0.attentions.1", trainable="lite", token_grad="confined", hyper_rank=16
    ),
    # the like-for-like limit: ostaf's own loop with LoRA (r = 4, peft) on the same q/k/v and the same token
    "lora-decoder": dict(part="decoder", trainable="lora"),
    "lora-decoder-confined": dict(part="decoder", trainable="lora", token_grad="confined"),
    "ostaf-decoder-lite-grad-ckpt": dict(part="decoder", trainable="lite", gradient_checkpointing=True),
    "ostaf-decoder-lite-channels-last": dict(part="decoder", trainable="lite", channels_last=True),
    "ostaf-decoder-lite-compile": dict(part="decoder", trainable="lite", compile=True),
    # the seeds' mechanisms, each alone on top of decoder lite (--token-steps is not a row: its two phases cost
    # what the frozen-offsets and frozen-token rows cost)
    "ostaf-decoder-lite+binding": dict(part="decoder", trainable="lite", attn_binding=1.0),
    "ostaf-decoder-lite+contrastive": dict(part="decoder", trainable="lite", nn_contrastive=0.1),
    "ostaf-decoder-lite+dual-path": dict(part="decoder", trainable="lite", dual_path=0.5),
    "ostaf-decoder-lite+uniform-lambda": dict(part="decoder", trainable="lite", train_lam="uniform"),
    "ostaf-decoder-lite+masked-loss": dict(part="decoder", trainable="lite", masked_loss=True),
}
MAIN = (  # the default run: the guarded rows and their context (the flags and mechanisms: --only)
    "forward",
    "full-finetune",
    "ostaf-decoder-lite",
    "ostaf-decoder-lite-confined",
    "ostaf-decoder-lite-frozen-token",
    "ostaf-encoder-lite",
    "ostaf-decoder-lite-confined-hyper64",
    "ostaf-decoder-lite-confined-hyper16",
    "lora-decoder",
    "lora-decoder-confined",
)
BASELINES = ("forward", "full-finetune", "lora-r4-decoder")
ADAM_STATE = 4  # fp32 parameter + gradient + AdamW's two moments, 4 bytes each
# (numerator, denominator, metric, target): ratio must be ≤ target (+10 % slack before failing). OSTAF against
# LoRA in the same loop on the same q/k/v with the same token: what the hypernetwork itself costs.
TARGETS = [
    ("ostaf-decoder-lite-confined", "lora-decoder-confined", "s_per_step", 1.10),
    ("ostaf-decoder-lite", "lora-decoder", "s_per_step", 1.35),
]


def _timed(step, steps: int) -> list[float]:
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def measure_ostaf(name: str, model: str, resolution: int, steps: int) -> tuple[list[float], int]:
    import torch

    from ostaf.train import make_optimizer, optimizer_step, prepare

    setup = prepare(train_config(Path(tempfile.mkdtemp()), model, resolution, **OSTAF[name]))
    optimizer = make_optimizer(setup)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    generator = torch.Generator().manual_seed(0)
    times = _timed(lambda: optimizer_step(setup, optimizer, scaler, generator), steps)
    return times, sum(p.numel() for p in setup.trainable)


def measure_baseline(name: str, model: str, resolution: int, steps: int) -> tuple[list[float], int]:
    import torch
    from torch.nn import functional as F

    from ostaf.conditioning import PromptEncoder
    from ostaf.models import load_pipeline, native_resolution

    pipe = load_pipeline(model)
    unet = pipe.unet.requires_grad_(False)
    pixels = resolution or native_resolution(pipe)
    size = pixels // pipe.vae_scale_factor
    with torch.no_grad():
        context = PromptEncoder(pipe).at_size("a ball", pixels).unet_kwargs()  # SDXL: pooled and time ids too
    latents, target = torch.randn(1, 4, size, size), torch.randn(1, 4, size, size)
    t = torch.tensor([500])
    if name == "forward":

        def step():
            with torch.inference_mode():
                unet(latents, t, **context)

        return _timed(step, steps), 0
    if name == "lora-r4-decoder":
        from peft import LoraConfig

        unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=r".*up_blocks.*attn[12]\.to_[qkv]"))
        params = [p for p in unet.parameters() if p.requires_grad]
    else:  # full fine-tune
        params = list(unet.requires_grad_(True).parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)  # as ostaf.train uses

    def step():
        loss = F.mse_loss(unet(latents, t, **context).sample, target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return _timed(step, steps), sum(p.numel() for p in params)


def measure(name: str, model: str, resolution: int, steps: int) -> dict:
    import torch

    from ostaf.allocator import tune_cpu_allocator

    tune_cpu_allocator()  # every configuration alike, as the `ostaf` command runs

    times, trainable = (measure_ostaf if name in OSTAF else measure_baseline)(name, model, resolution, steps)
    return {
        "config": name,
        "s_per_step": round(statistics.median(times[1:]), 3),
        "first_step_s": round(times[0], 3),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "trainable_state_gb": round(trainable * ADAM_STATE * 4 / 2**30, 3),
        "trainable_params": trainable,
        "threads": torch.get_num_threads(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sd14-random")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4, help="timed steps after one warm-up step")
    parser.add_argument("--only", nargs="*", help="configurations to run (default: all)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one configuration, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.model, args.resolution, args.steps)))
        return 0
    names = args.only or list(MAIN)
    rows = {}
    for name in names:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            name,
            "--model",
            args.model,
            "--resolution",
            str(args.resolution),
            "--steps",
            str(args.steps),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{name} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
            return 2
        rows[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"measured {name}: {rows[name]['s_per_step']} s/step", file=sys.stderr)
    title = f"{args.model} at {args.resolution} px, batch 1, median of {args.steps} steps after warm-up"
    print_table(list(rows.values()), title)
    return check_ratios(rows, TARGETS)


if __name__ == "__main__":
    sys.exit(main())
