"""Captioned views (`--views N`): the reference's silhouette recoloured, each view trained with its colour named.

One image of a shape is also one colour, one texture, one style: a placeholder (or weights) trained on it alone
learns them together, and at generation the reference's look leaks into prompts that name another one, or
the weights stop following the prompt's words. N views of the same reference with its foreground filled by a
flat named colour, each trained with its prompt naming that colour (``a blue object in the shape of *m``,
the class from `--view-class`), make the silhouette the only thing every view shares: what is common to them
is what the placeholder and the weights can learn, and the colour word keeps working beside them, because
the views teach exactly that composition. Every step adds `--view-loss-weight` × the denoising loss of a batch
of views (the placeholder's live e*, the weights at their training strength) to the reference's own loss.

The views are made from the reference and its foreground mask (SAM's, a preprocessed folder's, or, without
either, the pixels that differ from the plain background its border shows), encoded once by the VAE.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from ostaf.colours import PALETTE
from ostaf.errors import OstafError
from ostaf.mechanisms import timesteps
from ostaf.mechanisms.base import BaseModel, Mechanism
from ostaf.preprocess import Preprocessed
from ostaf.training_setup import Batch, autocast, encode_reference, noise_target

if TYPE_CHECKING:
    from ostaf.config import TrainConfig
    from ostaf.training_setup import TrainingSetup

BORDER_TOLERANCE = 40.0  # RGB distance from the border's colour past which a pixel is foreground (no mask given)


def foreground(reference: Preprocessed) -> np.ndarray:
    """The reference's foreground: its mask when segmented (not all True), else the pixels that differ from
    the median colour of its one-pixel border (a plain background); one clear error when neither finds one."""
    if not reference.mask.all():
        return reference.mask
    pixels = np.asarray(reference.image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    mask = np.linalg.norm(pixels - np.median(border, axis=0), axis=-1) > BORDER_TOLERANCE
    share = mask.mean()
    if not 0.005 < share < 0.95:
        raise OstafError(
            f"--views needs the reference's foreground: it has no mask and no plain background to find one "
            f"({share:.0%} of the pixels differ from the border); segment it (--segment with SAM weights) or "
            "pass an `ostaf preprocess` folder with its mask.png"
        )
    return mask


def recolour(image: Image.Image, mask: np.ndarray, colour: tuple[int, int, int]) -> Image.Image:
    """`image` with the pixels of `mask` filled with one flat `colour` (the rest kept as it is)."""
    pixels = np.asarray(image.convert("RGB")).copy()
    pixels[mask] = colour
    return Image.fromarray(pixels)


def view_prompts(attribute, view_class: str, colours: list[str]) -> list[str]:
    """Each view's training prompt: ``a {view class with its colour} in the {attribute} of {token}``."""
    return [attribute.training_prompt(view_class.format(colour=colour)) for colour in colours]


@dataclass
class Views:
    """The views as VAE posteriors, and what their prompts are."""

    colours: list[str]
    mean: torch.Tensor  # (N, 4, h, w)
    std: torch.Tensor
    prompts: list[str]


class CaptionedViews(Mechanism):
    """Adds the views' denoising loss, each view under its own prompt, to every step."""

    def __init__(self, views: Views, weight: float) -> None:
        self.views, self.weight = views, weight
        self.input_ids: torch.Tensor | None = None  # (E, N, 77), tokenised once the placeholder exists

    @classmethod
    def build(cls, config: TrainConfig, base: BaseModel) -> CaptionedViews | None:
        if not config.views:
            return None
        from ostaf.attributes import get_attribute

        attribute = get_attribute(config.attribute)
        colours = list(PALETTE)[: config.views]
        mask = foreground(base.reference)
        images = [recolour(base.reference.image, mask, PALETTE[c]) for c in colours]
        posteriors = [encode_reference(base.pipe, replace(base.reference, image=image)) for image in images]
        mean = torch.cat([m[:1] for m, _ in posteriors])  # shape's one augmentation (pad to square)
        std = torch.cat([s[:1] for _, s in posteriors])
        views = Views(colours, mean, std, view_prompts(attribute, config.view_class, colours))
        return cls(views, config.view_loss_weight)

    def attach(self, setup: TrainingSetup) -> None:
        self.views.mean, self.views.std = self.views.mean.to(setup.device), self.views.std.to(setup.device)
        self.input_ids = setup.prompts.ids(self.views.prompts)

    def loss(self, setup: TrainingSetup, batch: Batch, generator: torch.Generator | None) -> torch.Tensor | None:
        if generator is None:
            raise ValueError("the views' loss draws its batch from the run's generator: pass it")
        return self.weight * views_loss(setup, self.views, self.input_ids, generator)


def views_loss(setup: TrainingSetup, views: Views, input_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The noise-prediction MSE of a batch of views under their own prompts (the live e* in them)."""
    batch = setup.config.batch_size
    pick = torch.randint(0, views.mean.shape[0], (batch,), generator=generator)
    eps = torch.randn((batch, *views.mean.shape[1:]), generator=generator).to(setup.device)
    noise = torch.randn((batch, *views.mean.shape[1:]), generator=generator).to(setup.device)
    t = timesteps.sample_timesteps(setup, batch, generator).to(setup.device)
    scheduler = setup.noise_scheduler
    latents = (views.mean[pick] + views.std[pick] * eps) * setup.pipe.vae.config.scaling_factor
    noisy = scheduler.add_noise(latents, noise, t)
    target = noise_target(scheduler, latents, noise, t)
    with autocast(setup):
        cond = setup.prompts.encode(input_ids).select(pick.to(setup.device))
        if setup.time_ids is not None:  # SDXL: the views are the reference's frame
            cond = replace(cond, time_ids=setup.time_ids[:1].expand(batch, -1))
        pred = setup.unet(noisy.to(setup.unet.dtype), t, **cond.unet_kwargs()).sample
    return F.mse_loss(pred.float(), target.float())
