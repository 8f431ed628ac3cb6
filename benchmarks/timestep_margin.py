"""Where in the noise schedule does the training loss single out the reference's attribute?

For validation references of the Attribute World, the training prompt ("a … object in the shape of *m") is scored
with every value of the attribute in the placeholder's slot (each shape word, each look, each style), on the same
(noise, t) draws per timestep band. Per band it prints the right word's loss, its margin over the best wrong word
(how much lower, in %), its rank among all words and how often it wins a single draw:

    python benchmarks/timestep_margin.py --attribute shape --references 6

The margin is what a gradient step on the token can see; `--timestep-range` / `--snr-gamma`
(`ostaf/mechanisms/timesteps.py`) move training to the bands where it is large.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from PIL import Image

from ostaf.allocator import tune_cpu_allocator
from ostaf.config import TrainConfig
from ostaf.images import save_image
from ostaf.placeholder import word_embedding
from ostaf.recipes import WORLD
from ostaf.train import autocast, prepare
from ostaf.world.generator import COLOURS, SHAPES, STYLES, TEXTURE_WORDS, TEXTURES
from ostaf.world.references import references

BANDS = ((0, 250), (250, 500), (500, 750), (750, 1000))


def candidates(attribute: str) -> list[str]:
    if attribute == "shape":
        return list(SHAPES)
    if attribute == "style":
        return list(STYLES)
    return [f"{c} {TEXTURE_WORDS[t]}" for c in COLOURS for t in TEXTURES]


def truth(attribute: str, factors) -> str:
    return {"shape": factors.shape, "style": factors.style, "appearance": factors.look()}[attribute]


@torch.no_grad()
def margins(setup, words: list[str], right: str, draws: int, seed: int) -> list[tuple[float, float, int, float]]:
    """Per band: (right word's loss, margin over the best wrong word in %, rank, share of draws it wins)."""
    generator = torch.Generator().manual_seed(seed)
    latent = setup.latent_mean[:1].expand(draws, -1, -1, -1) * setup.pipe.vae.config.scaling_factor
    noise = torch.randn(latent.shape, generator=generator)
    out = []
    for low, high in BANDS:
        t = torch.randint(low, high, (draws,), generator=generator)
        noisy = setup.noise_scheduler.add_noise(latent, noise, t)
        per_word = []
        for word in words:
            setup.token.word_embedding = word_embedding(setup.pipe.tokenizer, setup.pipe.text_encoder, word)
            with autocast(setup):
                context = setup.pipe.text_encoder(setup.input_ids)[0].expand(draws, -1, -1)
                pred = setup.unet(noisy, t, context).sample
            per_word.append(((pred.float() - noise) ** 2).mean(dim=(1, 2, 3)))
        losses = torch.stack(per_word)  # (words, draws)
        index = words.index(right)
        mean = losses.mean(dim=1)
        wrong = torch.cat([mean[:index], mean[index + 1 :]])
        margin = float((wrong.min() - mean[index]) / mean[index] * 100)
        rank = int((mean < mean[index]).sum())
        wins = float((losses.argmin(dim=0) == index).float().mean())
        out.append((float(mean[index]), margin, rank, wins))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attribute", choices=("shape", "appearance", "style"), default="shape")
    parser.add_argument("--references", type=int, default=6, help="validation references")
    parser.add_argument("--draws", type=int, default=48, help="(noise, t) draws per band")
    parser.add_argument("--model", default="attribute-world")
    args = parser.parse_args()
    tune_cpu_allocator()
    words = candidates(args.attribute)
    head = " | ".join(f"t {low}–{high}: margin, rank, wins" for low, high in BANDS)
    print(f"| reference | {head} |\n|---|" + "---|" * len(BANDS))
    with tempfile.TemporaryDirectory() as tmp:
        for ref in references(args.references, "validation", 0, (args.attribute,)):
            world = ref.world()
            image = save_image(Image.fromarray(world.image), Path(tmp) / f"{ref.id}.png")
            config = TrainConfig(
                image=str(image),
                class_name=ref.class_name,
                attribute=args.attribute,
                model=args.model,
                out=str(Path(tmp) / "out"),
                **(WORLD.train | {"device": "cpu", "checkpoint_every": 0, "trainable": "token"}),
            )
            bands = margins(prepare(config), words, truth(args.attribute, world.factors), args.draws, 0)
            cells = " | ".join(f"{m:+.1f} %, {rank}, {wins:.2f}" for _, m, rank, wins in bands)
            print(f"| {ref.id} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
