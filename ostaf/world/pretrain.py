"""Pretrain a small text-to-image latent diffusion model on Attribute World, deterministically.

The recipe (`WorldRecipe`) is data: model configs, dataset size, steps, batch sizes, learning
rates, seeds. Everything is drawn from held-in (shape, colour, texture, style) combinations only.

1. A fixed dataset of `dataset_size` images of every style (world v3: `sample_world_factors`, v2's
   named factors with each attribute swapped for a *seen* unnamed value with probability
   `unnamed_share`, captioned without its word; novel unnamed values never appear).
2. The VAE (`AutoencoderKL`, 64 px → 16×16×4 latents): MSE reconstruction + a small KL term.
   It is then rounded to fp16 — the weights that ship — and every dataset latent is encoded
   once with that rounded VAE, so the U-Net learns exactly the latents users' VAE produces
   and the latent scale (`scaling_factor` = 1/std) is measured, not assumed.
3. The U-Net and the CLIP text encoder (random init, the offline CLIP tokenizer) on the latents
   and captions, the VAE frozen: the SD noise-prediction loss, warm-up + cosine learning rate.
   Captions take one of five templates per draw (`caption_variant`): the plain caption, the
   shape, appearance and style phrasings OSTAF's prompts use ("… object in the shape of a star",
   "a star in the appearance of a red striped object", "a red striped star in the style of
   outlined"), or empty (classifier-free guidance). Every template but the style phrasing names a
   style other than flat as ", outlined style", so a prompt that names none asks for flat.

Same recipe, same losses: every random draw comes from a generator seeded by the recipe.
The recipe's hash is stored beside the weights (fp16 safetensors: the test-asset cap).

Pretraining takes over an hour on 2 cores, so each stage resumes: `--work DIR` keeps a checkpoint
(weights, optimiser, learning-rate schedule, noise generator, losses) written atomically every
`checkpoint_seconds`; a killed run started again with the same recipe continues where it stopped and
gives the same weights as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch.nn import functional as F
from transformers import CLIPTextConfig, CLIPTextModel

from ostaf.presets import CLIP_TOKEN_IDS, SD_SCHEDULER
from ostaf.runtime import progress_bar, seeded
from ostaf.tokenizer import clip_tokenizer
from ostaf.world.generator import UNNAMED_SHARE, Factors, render, sample, sample_world_factors

LOSS_HEAD = 5  # how many first losses of each stage the asset records (and the test replays)


@dataclass(frozen=True)
class WorldRecipe:
    unet: dict[str, Any] = field(
        default_factory=lambda: dict(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(48, 96, 160),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=64,
            attention_head_dim=8,
            norm_num_groups=16,
        )
    )
    vae: dict[str, Any] = field(
        default_factory=lambda: dict(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            sample_size=64,
            layers_per_block=1,
            block_out_channels=(16, 32, 32),
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            norm_num_groups=8,
        )
    )
    text_encoder: dict[str, Any] = field(
        default_factory=lambda: dict(
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            num_hidden_layers=2,
            projection_dim=64,
            **CLIP_TOKEN_IDS,
        )
    )
    seed: int = 0
    world: int = 3  # the generator's version the dataset is drawn from
    unnamed_share: tuple[float, ...] = tuple(UNNAMED_SHARE.values())  # shape, appearance, style
    dataset_size: int = 40000
    vae_steps: int = 2000
    vae_batch: int = 16
    vae_lr: float = 1e-3
    vae_kl: float = 1e-6
    diffusion_steps: int = 6000
    diffusion_batch: int = 32
    diffusion_lr: float = 1e-3
    warmup_steps: int = 200
    # template probabilities: plain caption, shape, appearance and style phrasings, empty
    caption_mix: tuple[float, ...] = (0.45, 0.15, 0.15, 0.15, 0.1)
    checkpoint_seconds: float = field(default=240.0, compare=False)  # how often a stage saves (not in the hash)

    def hash(self) -> str:
        recipe = {k: v for k, v in asdict(self).items() if k != "checkpoint_seconds"}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]

    def share(self) -> dict[str, float]:
        return dict(zip(("shape", "appearance", "style"), self.unnamed_share, strict=True))


def caption_variant(factors: Factors, template: int) -> str:
    """The caption of `factors` in template 0 (plain), 1 (shape phrasing), 2 (appearance phrasing),
    3 (style phrasing) or 4 (empty)."""
    f = factors
    drawn = f.style_suffix()
    unnamed = f.unnamed()
    if template == 4:
        return ""
    if template == 0 or ("shape", "appearance", "style")[template - 1] in unnamed:
        return f.caption()  # a phrasing that would name an unnamed value falls back to the plain caption
    look = " ".join(w for w in ("a", f.look(), "object") if w)
    return (
        f"{look} in the shape of a {f.shape}{drawn}",
        f"a {f.shape_word()} in the appearance of {look}{drawn}",
        f"{' '.join(w for w in ('a', f.look(), f.shape_word()) if w)} in the style of {f.style}",
    )[template - 1]


def dataset_factor(recipe: WorldRecipe, index: int) -> Factors:
    """The factors of dataset image `index` (v2: `sample`'s held-in draw; v3: the unnamed mix)."""
    rng = np.random.default_rng(index)
    if recipe.world == 2:
        return sample(index, held_out=False, style=None).factors
    return sample_world_factors(rng, recipe.share())


def world_images(indices: np.ndarray | range, recipe: WorldRecipe | None = None) -> tuple[torch.Tensor, list[Factors]]:
    """(B, 3, 64, 64) in [-1, 1] and factors of the dataset images with these indices."""
    recipe = recipe or WorldRecipe()
    worlds = [render(dataset_factor(recipe, int(i))) for i in indices]
    pixels = torch.from_numpy(np.stack([w.image for w in worlds])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return pixels, [w.factors for w in worlds]


def build_models(recipe: WorldRecipe) -> tuple[AutoencoderKL, UNet2DConditionModel, CLIPTextModel]:
    with seeded(recipe.seed):
        vae = AutoencoderKL(**recipe.vae)
        unet = UNet2DConditionModel(**recipe.unet)
        text_encoder = CLIPTextModel(CLIPTextConfig(**recipe.text_encoder))
    return vae, unet, text_encoder


def vae_batches(recipe: WorldRecipe) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(recipe.seed)
    for _ in range(recipe.vae_steps):
        yield rng.integers(0, recipe.dataset_size, recipe.vae_batch)


class StageCheckpoint:
    """One stage's resumable state (its modules' and optimiser's state dicts, the noise generator, the step
    and the losses so far) in one file, replaced atomically at most every `seconds`."""

    def __init__(self, path: Path | None, seconds: float, stateful: dict[str, Any], generator: torch.Generator):
        self.path, self.seconds, self.stateful, self.generator = path, seconds, stateful, generator
        self.last = time.monotonic()

    def resume(self) -> tuple[int, list[float]]:
        """(the step to continue from, the losses so far); (0, []) without a checkpoint."""
        if self.path is None or not self.path.exists():
            return 0, []
        state = torch.load(self.path, weights_only=True)
        for name, obj in self.stateful.items():
            obj.load_state_dict(state[name])
        self.generator.set_state(state["generator"])
        return int(state["step"]), list(state["losses"])

    def maybe_save(self, step: int, losses: list[float], force: bool = False) -> None:
        if self.path is None or not (force or time.monotonic() - self.last >= self.seconds):
            return
        from ostaf.io import atomic_write

        state = {name: obj.state_dict() for name, obj in self.stateful.items()}
        state |= {"generator": self.generator.get_state(), "step": step, "losses": losses}
        atomic_write(self.path, lambda tmp: torch.save(state, tmp))
        self.last = time.monotonic()


def train_vae(
    vae: AutoencoderKL,
    recipe: WorldRecipe,
    progress: bool = True,
    steps: int | None = None,
    checkpoint: Path | None = None,
) -> list[float]:
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr)
    generator = torch.Generator().manual_seed(recipe.seed)
    saver = StageCheckpoint(checkpoint, recipe.checkpoint_seconds, {"vae": vae, "optimizer": optimizer}, generator)
    start, losses = saver.resume()
    batches = list(vae_batches(recipe))[:steps]
    bar = progress_bar(batches[start:], disable=not progress, desc="world VAE", initial=start, total=len(batches))
    for step, indices in enumerate(bar, start):
        pixels, _ = world_images(indices, recipe)
        posterior = vae.encode(pixels).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        loss = F.mse_loss(vae.decode(latents).sample, pixels) + recipe.vae_kl * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        saver.maybe_save(step + 1, losses)
    saver.maybe_save(len(batches), losses, force=True)
    return losses


def publish_vae(vae: AutoencoderKL) -> AutoencoderKL:
    """Round to the fp16 weights that ship (kept in fp32 for compute), frozen."""
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.copy_(parameter.half().float())
    return vae.requires_grad_(False).eval()


@torch.no_grad()
def encode(
    vae: AutoencoderKL, indices: np.ndarray | range, chunk: int = 256, recipe: WorldRecipe | None = None
) -> torch.Tensor:
    """Unscaled posterior means of the dataset images `indices`."""
    indices = np.asarray(indices)
    parts = [
        vae.encode(world_images(indices[i : i + chunk], recipe)[0]).latent_dist.mean
        for i in range(0, len(indices), chunk)
    ]
    return torch.cat(parts)


def diffusion_draws(recipe: WorldRecipe) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per step: dataset indices and caption templates (a pure function of the recipe)."""
    rng = np.random.default_rng(recipe.seed + 1)
    for _ in range(recipe.diffusion_steps):
        indices = rng.integers(0, recipe.dataset_size, recipe.diffusion_batch)
        yield indices, rng.choice(len(recipe.caption_mix), size=recipe.diffusion_batch, p=recipe.caption_mix)


def lr_factor(step: int, recipe: WorldRecipe) -> float:
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.diffusion_steps - recipe.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * progress))


def train_diffusion(
    latents_of: Callable[[np.ndarray], torch.Tensor],
    factors_of: Callable[[np.ndarray], list[Factors]],
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    recipe: WorldRecipe,
    scaling_factor: float,
    progress: bool = True,
    steps: int | None = None,
    checkpoint: Path | None = None,
) -> list[float]:
    """The SD noise-prediction loss on pre-encoded latents; `latents_of(indices)` gives unscaled latents."""
    tokenizer = clip_tokenizer()
    scheduler = DDPMScheduler.from_config(SD_SCHEDULER)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=recipe.diffusion_lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, recipe))
    generator = torch.Generator().manual_seed(recipe.seed + 1)
    stateful = {"unet": unet, "text_encoder": text_encoder, "optimizer": optimizer, "schedule": schedule}
    saver = StageCheckpoint(checkpoint, recipe.checkpoint_seconds, stateful, generator)
    start, losses = saver.resume()
    unet.train()
    text_encoder.train()
    draws = list(diffusion_draws(recipe))[:steps]
    bar = progress_bar(draws[start:], disable=not progress, desc="world diffusion", initial=start, total=len(draws))
    for step, (indices, templates) in enumerate(bar, start):
        latents = latents_of(indices) * scaling_factor
        captions = [caption_variant(f, int(t)) for f, t in zip(factors_of(indices), templates, strict=True)]
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
        ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        pred = unet(scheduler.add_noise(latents, noise, t), t, text_encoder(ids)[0]).sample
        loss = F.mse_loss(pred, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        saver.maybe_save(step + 1, losses)
        if progress and len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    saver.maybe_save(len(draws), losses, force=True)
    return losses


def dataset_factors(recipe: WorldRecipe) -> list[Factors]:
    """The factors of every dataset image, drawn exactly as `world_images` draws them, without rendering."""
    return [dataset_factor(recipe, i) for i in range(recipe.dataset_size)]


@torch.no_grad()
def caption_following(pipe, samples: int = 64, num_steps: int = 25, guidance: float = 5.0) -> dict[str, dict]:
    """Accuracy of the model's own samples on plain captions: held-in vs held-out combinations.

    Each caption names a shape, a colour, a texture and a style (none for flat); the exact evaluators
    classify each image.
    """
    from ostaf.generate import set_scheduler
    from ostaf.world.evaluate import classify_colour, classify_shape, classify_style, classify_texture, recover_mask

    set_scheduler(pipe, "ddim")
    report = {}
    for name, held_out in (("held_in", False), ("held_out", True)):
        factors = [sample(900_000 + i, held_out=held_out, style=None).factors for i in range(samples)]
        images = pipe(
            [f.caption() for f in factors],
            num_inference_steps=num_steps,
            guidance_scale=guidance,
            generator=[torch.Generator().manual_seed(i) for i in range(samples)],
            output_type="np",
        ).images
        hits = {"shape": [], "colour": [], "texture": [], "style": [], "all": []}
        for f, image in zip(factors, images, strict=True):
            pixels = (image * 255).round().astype(np.uint8)
            mask = recover_mask(pixels)
            got = {
                "shape": classify_shape(mask)[0] == f.shape,
                "colour": classify_colour(pixels, mask) == f.colour,
                "texture": classify_texture(pixels, mask) == f.texture,
                "style": classify_style(pixels, mask) == f.style,
            }
            for key, value in got.items():
                hits[key].append(value)
            hits["all"].append(all(got.values()))
        report[name] = {k: round(float(np.mean(v)), 3) for k, v in hits.items()} | {"n": samples}
    report["chance"] = {
        "shape": 0.1,
        "colour": 0.125,
        "texture": 0.25,
        "style": 0.25,
        "all": round(0.1 * 0.125 * 0.25 * 0.25, 5),
    }
    return report


def _work_folder(work: str | Path | None, recipe: WorldRecipe) -> Path | None:
    """The checkpoint folder of this recipe (a recipe change starts afresh, never mixes states)."""
    if work is None:
        return None
    folder = Path(work) / recipe.hash()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def pretrain(
    recipe: WorldRecipe, out: str | Path, progress: bool = True, work: str | Path | None = None
) -> dict[str, Any]:
    """Run every stage and save a diffusers pipeline folder (fp16 safetensors) plus `recipe.json`.

    With `work`, every stage checkpoints there and a rerun resumes (`StageCheckpoint`)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from ostaf.io import atomic_dir, atomic_write, write_json

    started = time.perf_counter()
    folder = _work_folder(work, recipe)
    vae, unet, text_encoder = build_models(recipe)
    vae_losses = train_vae(vae, recipe, progress, checkpoint=folder and folder / "vae.pt")
    vae = publish_vae(vae)
    cached = folder and folder / "latents.pt"
    if cached and cached.exists():
        latents = torch.load(cached, weights_only=True)
    else:
        latents = encode(vae, range(recipe.dataset_size), recipe=recipe)
        if cached:
            atomic_write(cached, lambda tmp: torch.save(latents, tmp))
    scaling_factor = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling_factor)
    factors = dataset_factors(recipe)
    diffusion_losses = train_diffusion(
        lambda idx: latents[torch.from_numpy(idx)],
        lambda idx: [factors[i] for i in idx],
        unet,
        text_encoder,
        recipe,
        scaling_factor,
        progress,
        checkpoint=folder and folder / "diffusion.pt",
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        unet=unet.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=clip_tokenizer(),
        scheduler=PNDMScheduler.from_config(SD_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    info = {
        "recipe": asdict(recipe),
        "recipe_hash": recipe.hash(),
        "seconds": round(time.perf_counter() - started, 1),
        "scaling_factor": scaling_factor,
        "vae_losses_head": vae_losses[:LOSS_HEAD],
        "diffusion_losses_head": diffusion_losses[:LOSS_HEAD],
        "vae_loss_final": float(np.mean(vae_losses[-50:])),
        "diffusion_loss_final": float(np.mean(diffusion_losses[-200:])),
    }
    info["caption_following"] = caption_following(pipe)
    pipe.scheduler = PNDMScheduler.from_config(SD_SCHEDULER)  # ship SD's default, not the one the check set

    def fill(folder: Path) -> None:
        pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)
        shutil.rmtree(folder / "tokenizer")  # 3.6 MB the loader rebuilds offline from open_clip's vocabulary
        write_json(folder / "recipe.json", info)

    atomic_dir(Path(out), fill)
    pipe.to(torch.float32)
    return info


def main(argv: list[str] | None = None) -> None:
    """`python -m ostaf.world.pretrain --out DIR`: rebuild the Attribute World model from the recipe."""
    import argparse

    from ostaf.presets import world_model_path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(world_model_path()), help="output folder (replaced atomically)")
    parser.add_argument("--work", default="runs/world-pretrain", help="checkpoints: a rerun resumes from here")
    args = parser.parse_args(argv)
    info = pretrain(WorldRecipe(), args.out, work=args.work)
    print(json.dumps({k: info[k] for k in ("recipe_hash", "seconds", "caption_following")}, indent=2))


if __name__ == "__main__":
    main()
