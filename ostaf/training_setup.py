"""What one training step touches, and the few reads every part of a step shares.

It sits below `ostaf.train`: the mechanisms (`ostaf.mechanisms`) and the checkpoint format read a
`TrainingSetup` without importing the training loop, so there is no train ↔ mechanisms ↔ checkpoint
import circle. The setup holds the run's core state only; each mechanism that is on keeps its own
state in its object (`setup.mechanisms`), and the loop asks them, never names them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import torch
from diffusers import DDPMScheduler
from torch.nn import functional as F
from torch.utils.hooks import RemovableHandle

from ostaf.attributes import Attribute
from ostaf.conditioning import Conditioning, PromptEncoder
from ostaf.config import TrainConfig
from ostaf.images import to_tensor
from ostaf.lora import LoraAdapter
from ostaf.models import Pipeline, vae_encode
from ostaf.offsets import OffsetsAdapter, OffsetsConfig
from ostaf.placeholder import PlaceholderEmbedding
from ostaf.preprocess import Preprocessed, augment

if TYPE_CHECKING:
    from ostaf.mechanisms.base import Mechanism

M = TypeVar("M")


@dataclass
class TrainingSetup:
    """Everything one training step touches."""

    config: TrainConfig
    attribute: Attribute
    pipe: Pipeline
    adapter: OffsetsAdapter | LoraAdapter | None  # what carries λ (ostaf.strength); None: token / fine-tuning
    offsets: OffsetsConfig  # the targeted attention (parts, targets): the card records it for every trainable
    layers: list[str]  # the targeted attention modules, whatever trains on them
    token: PlaceholderEmbedding
    token_id: int
    input_ids: torch.Tensor  # (E, 1, 77): the training prompt, one row per text encoder (SDXL: 2)
    latent_mean: torch.Tensor  # (K, 4, h, w), VAE posteriors of the reference's K augmentations
    latent_std: torch.Tensor
    noise_scheduler: DDPMScheduler
    device: torch.device
    amp_dtype: torch.dtype | None
    trainable: list[torch.nn.Parameter] = field(default_factory=list)
    token_hooks: list[RemovableHandle] = field(default_factory=list)  # e* into each text encoder
    prefix_hooks: list[RemovableHandle] = field(default_factory=list)  # the down/mid blocks run without autograd
    cached_context: Conditioning | None = None  # the text conditioning when the token is frozen
    time_ids: torch.Tensor | None = None  # (K, 6) SDXL micro-conditioning of each augmentation; None on SD-1.x
    step: int = 0  # the 0-based step being trained (`ostaf.mechanisms.schedule`)
    mechanisms: list[Mechanism] = field(default_factory=list)  # the ones that are on, in registry order
    _unit_vocabulary: torch.Tensor | None = None

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def prompts(self) -> PromptEncoder:
        return PromptEncoder(self.pipe)

    @property
    def latent_size(self) -> tuple[int, int]:
        """(h, w) of the reference's latents: the grid masks and attention maps are read on."""
        return tuple(self.latent_mean.shape[-2:])

    def mechanism(self, kind: type[M]) -> M | None:
        """The mechanism of class `kind` when it is on, else None (tests and reports read their state)."""
        return next((m for m in self.mechanisms if isinstance(m, kind)), None)

    def unit_vocabulary(self) -> torch.Tensor:
        """(V, D) unit rows of the words before the placeholder (every encoder's row): computed once, shared by
        the mechanisms that compare e* with words."""
        if self._unit_vocabulary is None:
            self._unit_vocabulary = F.normalize(self.prompts.rows(self.token_id), dim=-1)
        return self._unit_vocabulary


class Batch(NamedTuple):
    """One micro-batch, all drawn from the run's generator."""

    latents: torch.Tensor  # (B, 4, h, w)
    noise: torch.Tensor
    timesteps: torch.Tensor  # (B,)
    pick: torch.Tensor | None = None  # (B,) which augmentation each sample is
    lam: torch.Tensor | None = None  # (B,) per-sample λ (--train-lam uniform), else the adapter's own

    @staticmethod
    def cat(batches: list[Batch]) -> Batch:
        """Micro-batches as one batch, in order (--fused-accum)."""
        return Batch(*(None if parts[0] is None else torch.cat(parts) for parts in zip(*batches, strict=True)))

    def chunk(self, groups: int) -> list[Batch]:
        """The inverse of `cat` for `groups` micro-batches of one size."""
        split = [None if x is None else x.chunk(groups) for x in self]
        return [Batch(*(None if x is None else x[i] for x in split)) for i in range(groups)]


def autocast(setup: TrainingSetup):
    return torch.autocast(setup.device.type, dtype=setup.amp_dtype, enabled=setup.amp_dtype is not None)


def text_context(setup: TrainingSetup) -> Conditioning:
    """The training prompt's text conditioning, with the live e* injected (SDXL: without the time ids)."""
    if setup.cached_context is not None:
        return setup.cached_context
    return setup.prompts.encode(setup.input_ids)


def unet_conditioning(setup: TrainingSetup, batch: int, pick: torch.Tensor | None = None) -> Conditioning:
    """The conditioning of `batch` samples: the prompt's, and on SDXL each sample's augmentation's time ids
    (`pick`; None: the first augmentation's)."""
    cond = text_context(setup).expand(batch)
    if setup.time_ids is None:
        return cond
    time_ids = setup.time_ids[pick] if pick is not None else setup.time_ids[:1].expand(batch, -1)
    # confined: the token learns only through the adapter's cross-attentions, so not through SDXL's pooled
    # embedding either (it enters every resnet through the time embedding)
    pooled = cond.pooled.detach() if setup.config.token_grad == "confined" else cond.pooled
    return replace(cond, pooled=pooled, time_ids=time_ids)


class Frames(NamedTuple):
    """Whole frames at the training size that a mechanism adds to a step (views, prior images), drawn from the
    run's generator: they join the reference's U-Net pass where every mechanism allows it (`shares_pass`), and
    their plain noise-prediction MSE enters the loss × `weight`."""

    latents: torch.Tensor  # (N, 4, h, w), unscaled VAE latents
    noise: torch.Tensor
    timesteps: torch.Tensor  # (N,)
    cond: Conditioning  # each frame's text conditioning (SDXL: the first augmentation's time ids are added)
    weight: float = 1.0

    @staticmethod
    def cat(parts: list[Frames]) -> Frames:
        """One mechanism's frames of several micro-batches as one set (--fused-accum)."""
        if len({f.weight for f in parts}) != 1:
            raise ValueError("frames of one mechanism carry one weight")
        tensors = (torch.cat([getattr(f, name) for f in parts]) for name in ("latents", "noise", "timesteps"))
        return Frames(*tensors, Conditioning.cat([f.cond for f in parts]), parts[0].weight)


def noised(setup: TrainingSetup, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor):
    """(noisy input, what the U-Net is trained to predict) of unscaled `latents`."""
    scheduler = setup.noise_scheduler
    latents = latents * setup.pipe.vae.config.scaling_factor
    return scheduler.add_noise(latents, noise, t), noise_target(scheduler, latents, noise, t)


def frame_conditioning(setup: TrainingSetup, frames: Frames) -> Conditioning:
    """The frames' conditioning: their prompts' (SDXL: with the first augmentation's time ids, whole frames)."""
    if setup.time_ids is None:
        return frames.cond
    return replace(frames.cond, time_ids=setup.time_ids[:1].expand(frames.latents.shape[0], -1))


def predict(setup: TrainingSetup, parts: list[tuple[torch.Tensor, torch.Tensor, Conditioning]]) -> list[torch.Tensor]:
    """The U-Net's predictions for several sets of (noisy latents, t, conditioning) in ONE pass: a batch of two
    costs about two thirds of two passes of one; the sets come back split as they went in."""
    if len(parts) == 1:  # the usual step: no copies
        noisy, t, cond = parts[0]
    else:
        noisy = torch.cat([noisy for noisy, _, _ in parts])
        t = torch.cat([t for _, t, _ in parts])
        cond = Conditioning.cat([cond for _, _, cond in parts])
    with autocast(setup):
        pred = setup.unet(noisy.to(setup.unet.dtype), t, **cond.unet_kwargs()).sample
    return list(pred.split([noisy.shape[0] for noisy, _, _ in parts]))


def frame_mse(setup: TrainingSetup, frames: Frames) -> torch.Tensor:
    """The frames' noise-prediction MSE in a pass of their own (unweighted)."""
    noisy, target = noised(setup, frames.latents, frames.noise, frames.timesteps)
    (pred,) = predict(setup, [(noisy, frames.timesteps, frame_conditioning(setup, frames))])
    return F.mse_loss(pred.float(), target.float())


def noise_target(scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the U-Net is trained to predict: the noise (ε) or the velocity (v-prediction)."""
    return noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, t)


@torch.no_grad()
def encode_reference(pipe: Pipeline, reference: Preprocessed) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE posteriors (mean, std), each (K, 4, h, w), of the K augmentations: encoded once per run."""
    means, stds = [], []
    for recipe in reference.recipes:
        pixels = to_tensor(augment(reference.image, recipe, reference.attribute))
        posterior = vae_encode(pipe.vae, pixels)
        means.append(posterior.mean.float())
        stds.append(posterior.std.float())
    return torch.cat(means), torch.cat(stds)
