"""The library demo: learn a held-out shape and a held-out appearance from one image each, then compose them.

    python -m ostaf.demo                      # the Attribute World model (`world` recipe), minutes on 2 cores
    python -m ostaf.demo --model tiny         # random weights: the code path only

With `attribute-world` the references are world images whose combination the model never saw
(`ostaf.world.references`); any other model gets the same images upscaled. Real photographs come
with the pipeline's Attribute Benchmark (`dvc pull`), real weights with `--model`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from PIL import Image

from ostaf.config import GenerateConfig, TrainConfig
from ostaf.generate import generate
from ostaf.images import save_image
from ostaf.recipes import WORLD
from ostaf.train import train
from ostaf.world.references import references


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--model", default="attribute-world", help="the demo's model: the trained world preset")
    parser.add_argument("--steps", type=int, default=WORLD.train["steps"])
    parser.add_argument("--lr", type=float, default=WORLD.train["lr"])
    args = parser.parse_args(argv)
    out = Path(args.out)
    started = time.perf_counter()
    shape_ref, look_ref = references(1, attributes=("shape", "appearance"))
    ckpts = {}
    for ref in (shape_ref, look_ref):
        image = save_image(Image.fromarray(ref.world().image), out / f"reference-{ref.attribute}.png")
        config = TrainConfig(
            image=str(image),
            class_name=ref.class_name,
            attribute=ref.attribute,
            model=args.model,
            out=str(out / ref.attribute),
            **(WORLD.train | {"steps": args.steps, "lr": args.lr}),
        )
        ckpts[ref.attribute] = str(train(config).out)
    generate(
        GenerateConfig(
            ckpt=[ckpts["shape"], ckpts["appearance"]],
            prompt=[shape_ref.prompt, look_ref.prompt, "an object in the shape of *m in the appearance of *a"],
            out=str(out / "generate"),
            **(WORLD.generate | {"lam": [0.0, 0.5, 1.0], "seeds": [0, 1]}),  # a shorter sweep than the recipe's
        )
    )
    print(f"demo done in {time.perf_counter() - started:.0f} s: references and grids under {out}")


if __name__ == "__main__":
    main()
