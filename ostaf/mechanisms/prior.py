"""Prior preservation (`--prior-images N`): DreamBooth's class-image loss, for every weight method.

Offsets, LoRA and fine-tuned blocks learn the reference and, at λ = 1, forget how the class prompt is drawn:
text control falls. DreamBooth's answer (diffusers' `--with_prior_preservation`, `--prior_loss_weight`) is to
generate N images of the class prompt with the *base* model once, and to add, every step, their denoising
loss under the weights being trained: the weights may change what the placeholder's prompt draws, not what
the class prompt does. The images are generated before any adapter is installed and cached per (base model,
class prompt, count, resolution), so every run on the same class reuses them.

The class prompt is ``a {class name}`` (`--prior-prompt` to change it); it has no placeholder, so its text
conditioning is encoded once. The prior sample's timestep comes from training's band (`--timestep-range`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torch.nn import functional as F

from ostaf.io import atomic_dir, write_json

if TYPE_CHECKING:
    from ostaf.conditioning import Conditioning, PromptEncoder
    from ostaf.models import Pipeline
    from ostaf.train import TrainingSetup

CACHE_ENV = "OSTAF_PRIOR_CACHE"  # where class images are cached (default: ~/.cache/ostaf/prior)
NUM_STEPS = 25  # DDIM steps of a class image
GUIDANCE = 5.0  # its classifier-free guidance
INDEX = "prior.json"


@dataclass
class PriorImages:
    """The class images as latents, and the class prompt's conditioning: what each step's prior loss reads."""

    latents: torch.Tensor  # (N, 4, h, w): VAE means, unscaled (as the reference's)
    context: Conditioning  # the class prompt's, batch 1
    prompt: str
    folder: Path  # where the images are cached


def class_prompt(class_name: str, prompt: str = "") -> str:
    return prompt or f"a {class_name}"


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ostaf" / "prior"


def cache_key(model: str, prompt: str, count: int, resolution: int, seed: int) -> str:
    """One folder per (base model, class prompt, count, resolution, seed): a change makes new images."""
    spec = {"model": model, "prompt": prompt, "count": count, "resolution": resolution, "seed": seed}
    spec |= {"num_steps": NUM_STEPS, "guidance": GUIDANCE}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def class_images(pipe: Pipeline, model: str, prompt: str, count: int, resolution: int, seed: int) -> Path:
    """The folder of `count` images of `prompt` from the base `pipe` (generated once, then read back)."""
    folder = cache_root() / cache_key(model, prompt, count, resolution, seed)
    if (folder / INDEX).is_file():
        return folder

    def generate(tmp: Path) -> Path:
        from ostaf.generate import SCHEDULER_CLASSES, Sample, run_batch

        scheduler = pipe.scheduler
        pipe.scheduler = SCHEDULER_CLASSES["ddim"].from_config(scheduler.config)
        try:
            samples = [Sample(prompt, 1.0, seed + i) for i in range(count)]
            images = run_batch(pipe, [], samples, NUM_STEPS, GUIDANCE, resolution)
        finally:
            pipe.scheduler = scheduler
        for i, image in enumerate(images):
            image.save(tmp / f"{i:03d}.png")
        write_json(tmp / INDEX, {"model": model, "prompt": prompt, "seeds": [s.seed for s in samples]})
        return tmp

    return atomic_dir(folder, generate)


@torch.no_grad()
def prepare_prior(
    pipe: Pipeline, prompts: PromptEncoder, model: str, prompt: str, count: int, resolution: int, seed: int
) -> PriorImages:
    """The class images (cached) encoded by the VAE, and the class prompt's conditioning; call it before any
    adapter or placeholder is installed: the images are the base model's."""
    from ostaf.images import to_tensor
    from ostaf.models import vae_encode

    folder = class_images(pipe, model, prompt, count, resolution, seed)
    device = pipe.vae.device
    pixels = torch.cat([to_tensor(Image.open(folder / f"{i:03d}.png").convert("RGB")) for i in range(count)])
    latents = vae_encode(pipe.vae, pixels.to(device)).mean.float()
    context = prompts.encode(prompts.ids(prompt))
    return PriorImages(latents, context, prompt, folder)


def prior_loss(setup: TrainingSetup, generator: torch.Generator) -> torch.Tensor:
    """The class images' noise-prediction MSE under the weights being trained (their adapter at its training
    strength), on a batch drawn from the run's generator."""
    from ostaf.mechanisms import timesteps
    from ostaf.train import autocast

    prior = setup.prior
    batch = setup.config.batch_size
    pick = torch.randint(0, prior.latents.shape[0], (batch,), generator=generator)
    noise = torch.randn((batch, *prior.latents.shape[1:]), generator=generator).to(setup.device)
    t = timesteps.sample_timesteps(setup, batch, generator).to(setup.device)
    scheduler = setup.noise_scheduler
    latents = prior.latents[pick] * setup.pipe.vae.config.scaling_factor
    noisy = scheduler.add_noise(latents, noise, t)
    target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, t)
    cond = prior.context.expand(batch)
    if setup.time_ids is not None:  # SDXL: the class images are whole frames at the training size
        cond = replace(cond, time_ids=setup.time_ids[:1].expand(batch, -1))
    with autocast(setup):
        pred = setup.unet(noisy.to(setup.unet.dtype), t, **cond.unet_kwargs()).sample
    return F.mse_loss(pred.float(), target.float())
