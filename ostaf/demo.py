"""The embedded-defaults demo: learn shape and appearance from synthetic references on `tiny`, then compose.

Runs with no weights and no services; real images come with the pipeline's
Attribute Benchmark (`dvc pull`), real weights with `--model`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ostaf.config import GenerateConfig, TrainConfig
from ostaf.generate import generate
from ostaf.images import save_image
from ostaf.train import train


def synthetic_reference(kind: str, size: int = 128) -> Image.Image:
    """A red striped disc (appearance) or a dark star outline (shape) on white."""
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    image = np.full((size, size, 3), 255, np.uint8)
    if kind == "appearance":
        disc = xx**2 + yy**2 < 0.16
        stripes = np.floor((xx + yy) * 12) % 2 == 0
        image[disc & stripes] = (210, 40, 40)
        image[disc & ~stripes] = (250, 200, 40)
    else:
        angle, radius = np.arctan2(yy, xx), np.hypot(xx, yy)
        star = radius < 0.2 + 0.15 * np.cos(5 * angle)
        image[star] = (30, 60, 120)
    return Image.fromarray(image)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--model", default="tiny")
    args = parser.parse_args(argv)
    out = Path(args.out)
    started = time.perf_counter()
    ckpts = {}
    for attribute, class_name in (("shape", "star"), ("appearance", "ball")):
        ref = save_image(synthetic_reference(attribute), out / f"reference-{attribute}.png")
        config = TrainConfig(
            image=str(ref),
            class_name=class_name,
            attribute=attribute,
            model=args.model,
            out=str(out / attribute),
            steps=args.steps,
            checkpoint_every=20,
            segment=args.model != "tiny",
            lr=1e-4,
        )
        ckpts[attribute] = str(train(config).out)
    generate(
        GenerateConfig(
            ckpt=[ckpts["shape"], ckpts["appearance"]],
            prompt=["a vase in the appearance of *a", "a cat in the shape of *m in the appearance of *a"],
            lam=[0.0, 0.5, 1.0],
            seeds=[0, 1],
            num_steps=20,
            out=str(out / "generate"),
        )
    )
    print(f"demo done in {time.perf_counter() - started:.0f} s: grids under {out / 'generate'}")


if __name__ == "__main__":
    main()
