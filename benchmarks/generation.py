"""Generation cost: base pipeline vs OSTAF unmerged vs OSTAF merged, a 5-value λ sweep as one batch vs five
sequential runs, and the generation mechanisms (dual path, self-subject-attention) — measured side by side,
round-robin, in one process.

    python benchmarks/generation.py                          # sd14-random, 256 px, 4 DDIM steps, CPU
    python benchmarks/generation.py --only base dual-path reference-attention
    python benchmarks/generation.py --device cuda --resolution 512 --num-steps 20
    python benchmarks/generation.py --model tiny --rounds 2  # a quick smoke run

Every configuration generates from the same prompt, seed and number of steps; each round runs
every configuration once (in a rotated order), and the table shows the median over rounds, so
drift on a shared machine hits all of them alike. Offsets are a freshly initialised decoder
adapter (cost does not depend on their values). Exit code 1 when a ratio misses its target by
more than 10 %.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ratios import check_ratios, print_table  # noqa: E402

LAMS = (0.0, 0.25, 0.5, 0.75, 1.0)
PROMPT = "a vase in the appearance of a striped ball"
CONFIGS = (
    "base",
    "ostaf-unmerged",
    "ostaf-merged",
    "sweep-5-one-batch",
    "sweep-5-sequential",
    "dual-path",
    "reference-attention",
    "base-batch-8",
    "reference-attention-batch-8",
)
BATCH = 8
IMAGES = {"sweep-5-one-batch": 5, "sweep-5-sequential": 5, "base-batch-8": BATCH, "reference-attention-batch-8": BATCH}


def targets(device: str) -> list[tuple[str, str, str, float]]:
    sweep = 0.6 if device == "cuda" else 1.05  # a batch can only save work where the device is underused
    return [
        ("ostaf-merged", "base", "seconds", 1.02),
        ("sweep-5-one-batch", "sweep-5-sequential", "seconds", sweep),
        # one extra U-Net pass per step at batch 1 (the reference) against the CFG batch of 2, and a second
        # attention per targeted layer; in a batch of 8 the one reference pass serves all 16 rows
        ("reference-attention", "base", "seconds", 1.6),
        ("reference-attention-batch-8", "base-batch-8", "seconds", 1.15),
        ("dual-path", "ostaf-unmerged", "seconds", 1.3),
    ]


def main() -> int:
    import torch

    from ostaf.allocator import tune_cpu_allocator

    tune_cpu_allocator()  # as the `ostaf` command runs

    import numpy as np
    from PIL import Image

    from ostaf.conditioning import PromptEncoder
    from ostaf.generate import GenerationOptions, Sample, run_batch, set_scheduler
    from ostaf.mechanisms.dual_path import VanillaPrompts
    from ostaf.mechanisms.reference_attention import ReferenceAttention
    from ostaf.models import load_pipeline
    from ostaf.offsets import OffsetsAdapter, OffsetsConfig
    from ostaf.placeholder import add_placeholder, word_embedding
    from ostaf.runtime import resolve_device

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sd14-random")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--num-steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", nargs="+", choices=CONFIGS, help="measure these configurations only")
    args = parser.parse_args()
    configs = tuple(args.only or CONFIGS)
    device = resolve_device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    pipe = load_pipeline(args.model, dtype=dtype).to(device)
    set_scheduler(pipe, "ddim")
    stock = dict(pipe.unet.attn_processors)
    adapter = OffsetsAdapter.install(pipe.unet, OffsetsConfig(parts=("decoder",)), "*a")
    with_offsets = dict(pipe.unet.attn_processors)
    add_placeholder(pipe.tokenizer, pipe.text_encoder, "*a", word_embedding(pipe.tokenizer, pipe.text_encoder, "ball"))
    dual = GenerationOptions(0.5, VanillaPrompts(PromptEncoder(pipe), ["*a"]))
    image = Image.fromarray(np.full((args.resolution, args.resolution, 3), 128, np.uint8))
    square = np.zeros((args.resolution, args.resolution), bool)
    square[args.resolution // 4 : -args.resolution // 4, args.resolution // 4 : -args.resolution // 4] = True
    reference = ReferenceAttention(pipe, [adapter], image, square, 1.0, "decoder", args.resolution)
    reference.remove()  # installed per run below: the configurations share one pipeline

    def generate(batch: list[Sample], adapters: list, mechanisms: GenerationOptions | None = None) -> None:
        run_batch(pipe, adapters, batch, args.num_steps, 7.5, args.resolution, mechanisms)

    def base() -> None:
        generate([Sample(PROMPT, 1.0, 0)], [])

    def base_batch() -> None:
        generate([Sample(PROMPT, 1.0, seed) for seed in range(BATCH)], [])

    def unmerged() -> None:  # λ applied inside every attention call, as during training
        adapter.set_scale(1.0)
        pipe(
            PROMPT,
            num_inference_steps=args.num_steps,
            height=args.resolution,
            width=args.resolution,
            generator=torch.Generator().manual_seed(0),
        )

    def merged() -> None:  # `run_batch` folds a single λ into the weights (merge + unmerge timed too)
        generate([Sample(PROMPT, 1.0, 0)], [adapter])

    def sweep_batch() -> None:
        generate([Sample(PROMPT, lam, 0) for lam in LAMS], [adapter])

    def sweep_sequential() -> None:
        for lam in LAMS:
            generate([Sample(PROMPT, lam, 0)], [adapter])

    def dual_path() -> None:  # β = 0.5: every decoder attention twice, the hard prompt encoded once
        generate([Sample(PROMPT + " *a", 1.0, 0)], [adapter], dual)

    def reference_attention(images: int = 1) -> None:  # ω = 1 on the decoder's self-attention: one reference pass
        reference.install()  # per step, whatever the batch
        try:
            samples = [Sample(PROMPT, 1.0, seed) for seed in range(images)]
            generate(samples, [adapter], GenerationOptions(reference=reference))
        finally:
            reference.remove()

    runs = {
        "base": base,
        "ostaf-unmerged": unmerged,
        "ostaf-merged": merged,
        "sweep-5-one-batch": sweep_batch,
        "sweep-5-sequential": sweep_sequential,
        "dual-path": dual_path,
        "reference-attention": reference_attention,
        "base-batch-8": base_batch,
        "reference-attention-batch-8": lambda: reference_attention(BATCH),
    }
    times: dict[str, list[float]] = {name: [] for name in configs}
    for round_ in range(args.rounds + 1):  # round 0 warms up (allocator, kernels) and is not counted
        order = configs[round_ % len(configs) :] + configs[: round_ % len(configs)]
        for name in order:
            pipe.unet.set_attn_processor(dict(stock if name.startswith("base") else with_offsets))
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            runs[name]()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if round_:
                times[name].append(time.perf_counter() - start)
        print(f"round {round_}/{args.rounds} done", file=sys.stderr)
    rows = {
        name: {"config": name, "seconds": round(statistics.median(t), 3), "images": IMAGES.get(name, 1)}
        for name, t in times.items()
    }
    title = (
        f"{args.model} at {args.resolution} px on {device.type}, {args.num_steps} DDIM steps, CFG 7.5, "
        f"median of {args.rounds} rounds"
    )
    print_table(list(rows.values()), title)
    return check_ratios(rows, targets(device.type))


if __name__ == "__main__":
    sys.exit(main())
