"""Prior preservation (`--prior-images N`): DreamBooth's class-image loss, for every weight method.

Offsets, LoRA and fine-tuned blocks learn the reference and, at λ = 1, forget how the class prompt is drawn:
text control falls. DreamBooth's answer (diffusers' `--with_prior_preservation`, `--prior_loss_weight`) is to
generate N images of the class prompt with the *base* model once, and to add, every step, their denoising
loss under the weights being trained: the weights may change what the placeholder's prompt draws, not what
the class prompt does. The images are generated before any adapter is installed and cached per (base model,
class prompt, count, resolution), so every run on the same class reuses them.

The class prompt is ``a {class name}`` (`--prior-prompt` to change it). Several `--prior-prompt`s share the
images in turn: for one attribute of an object, the class with other values of the attributes not learned
("a blue dotted object", "a green plain object" for a shape) keeps the weights following those words, which
the single class prompt (the reference's own look) cannot teach. No class prompt has a placeholder, so their
text conditioning is encoded once. The prior sample's timestep comes from training's band (`--timestep-range`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from ostaf.io import atomic_dir, write_json
from ostaf.mechanisms import schedule, timesteps
from ostaf.mechanisms.base import BaseModel, Mechanism
from ostaf.training_setup import Batch, Frames, frame_mse

if TYPE_CHECKING:
    from ostaf.conditioning import Conditioning, PromptEncoder
    from ostaf.config import TrainConfig
    from ostaf.models import Pipeline
    from ostaf.training_setup import TrainingSetup

CACHE_ENV = "OSTAF_PRIOR_CACHE"  # where class images are cached (default: ~/.cache/ostaf/prior)
NUM_STEPS = 25  # DDIM steps of a class image
GUIDANCE = 5.0  # its classifier-free guidance
INDEX = "prior.json"


@dataclass
class PriorImages:
    """The class images as latents, and the class prompt's conditioning: what each step's prior loss reads."""

    latents: torch.Tensor  # (N, 4, h, w): VAE means, unscaled (as the reference's)
    context: Conditioning  # the class prompts', one row each (P); image i was drawn from prompt i mod P
    prompts: list[str]
    folder: Path  # where the images are cached


def class_prompts(class_name: str, prompts: list[str] | tuple[str, ...] = ()) -> list[str]:
    return list(prompts) or [f"a {class_name}"]


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ostaf" / "prior"


def cache_key(model: str, prompts: list[str], count: int, resolution: int, seed: int) -> str:
    """One folder per (base model, class prompts, count, resolution, seed): a change makes new images."""
    prompt = prompts[0] if len(prompts) == 1 else prompts  # one prompt: the key it always had
    spec = {"model": model, "prompt": prompt, "count": count, "resolution": resolution, "seed": seed}
    spec |= {"num_steps": NUM_STEPS, "guidance": GUIDANCE}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def class_images(pipe: Pipeline, model: str, prompts: list[str], count: int, resolution: int, seed: int) -> Path:
    """The folder of `count` images of `prompts` in turn from the base `pipe` (generated once, then read back)."""
    folder = cache_root() / cache_key(model, prompts, count, resolution, seed)
    if (folder / INDEX).is_file():
        return folder

    def generate(tmp: Path) -> Path:
        from ostaf.generate import SCHEDULER_CLASSES, Sample, run_batch

        scheduler = pipe.scheduler
        pipe.scheduler = SCHEDULER_CLASSES["ddim"].from_config(scheduler.config)
        try:
            samples = [Sample(prompts[i % len(prompts)], 1.0, seed + i) for i in range(count)]
            images = run_batch(pipe, [], samples, NUM_STEPS, GUIDANCE, resolution)
        finally:
            pipe.scheduler = scheduler
        for i, image in enumerate(images):
            image.save(tmp / f"{i:03d}.png")
        index = {"model": model, "prompts": [s.prompt for s in samples], "seeds": [s.seed for s in samples]}
        write_json(tmp / INDEX, index)
        return tmp

    return atomic_dir(folder, generate)


@torch.no_grad()
def prepare_prior(
    pipe: Pipeline, prompts: PromptEncoder, model: str, texts: list[str], count: int, resolution: int, seed: int
) -> PriorImages:
    """The class images (cached) encoded by the VAE, and the class prompts' conditioning; call it before any
    adapter or placeholder is installed: the images are the base model's."""
    from ostaf.images import to_tensor
    from ostaf.models import vae_encode

    folder = class_images(pipe, model, texts, count, resolution, seed)
    device = pipe.vae.device
    pixels = torch.cat([to_tensor(Image.open(folder / f"{i:03d}.png").convert("RGB")) for i in range(count)])
    latents = vae_encode(pipe.vae, pixels.to(device)).mean.float()
    context = prompts.encode(prompts.ids(texts))
    return PriorImages(latents, context, texts, folder)


class PriorPreservation(Mechanism):
    """Adds `--prior-loss-weight` × the class images' loss to every step in which weights train."""

    def __init__(self, images: PriorImages, weight: float) -> None:
        self.images, self.weight = images, weight

    @classmethod
    def build(cls, config: TrainConfig, base: BaseModel) -> PriorPreservation | None:
        if not config.prior_images:
            return None
        texts = class_prompts(config.class_name, config.prior_prompt)
        images = prepare_prior(
            base.pipe, base.prompts, base.model_key, texts, config.prior_images, base.resolution, config.seed
        )
        return cls(images, config.prior_loss_weight)

    def frames(self, setup: TrainingSetup, batch: Batch, generator: torch.Generator | None) -> Frames | None:
        if schedule.in_token_phase(setup, setup.step):  # the weights are frozen: nothing to preserve
            return None
        if generator is None:
            raise ValueError("the prior images draw their batch from the run's generator: pass it")
        return prior_frames(setup, self.images, generator)._replace(weight=self.weight)


def prior_frames(setup: TrainingSetup, prior: PriorImages, generator: torch.Generator) -> Frames:
    """A batch of class images, each under its own prompt, drawn from `generator`."""
    batch = setup.config.batch_size
    pick = torch.randint(0, prior.latents.shape[0], (batch,), generator=generator)
    noise = torch.randn((batch, *prior.latents.shape[1:]), generator=generator).to(setup.device)
    t = timesteps.sample_timesteps(setup, batch, generator).to(setup.device)
    cond = prior.context.select(pick % len(prior.prompts))  # each image's own prompt
    return Frames(prior.latents[pick], noise, t, cond)


def prior_loss(setup: TrainingSetup, prior: PriorImages, generator: torch.Generator) -> torch.Tensor:
    """The class images' noise-prediction MSE under the weights being trained (their adapter at its training
    strength), on a batch drawn from the run's generator, in a pass of their own."""
    return frame_mse(setup, prior_frames(setup, prior, generator))
