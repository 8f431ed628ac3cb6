"""Masked denoising loss (`--masked-loss`): only a region of the reference is learned.

The region (`--mask-region`): the reference mask (its background is not learned), or the band along the object's
edge (`EdgeBand.region`: a style's rim, cast shadow and frame — the object's inside, its look, and the background
beyond are not learned). It follows each augmentation (`augment_mask`), is reduced to the latent grid (a latent cell
counts if any of its pixels does) and grown by `mask_dilation` cells. From `--masked-loss-start` on (before it, the
whole picture: with `--token-steps`, the token learns the picture and the weights only the region).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.nn import functional as F

from ostaf.mechanisms.base import BaseModel, Mechanism
from ostaf.preprocess import Preprocessed, augment_mask

if TYPE_CHECKING:
    from ostaf.config import TrainConfig
    from ostaf.training_setup import Batch, TrainingSetup


class MaskedLoss(Mechanism):
    """The noise-prediction MSE as a mean over each sample's cells of the region, from the start step on."""

    def __init__(self, reference: Preprocessed, dilation: int, region: np.ndarray, start: int = 0) -> None:
        self.reference, self.dilation, self.region, self.start = reference, dilation, region, start
        self.masks: torch.Tensor | None = None  # (K, 1, h, w) per augmentation, dilated
        self.active = start == 0

    @classmethod
    def build(cls, config: TrainConfig, base: BaseModel) -> MaskedLoss | None:
        if not config.masked_loss:
            return None
        region = base.reference.mask if config.mask_region == "object" else edge_region(base.reference)
        return cls(base.reference, config.mask_dilation, region, config.masked_loss_start)

    def attach(self, setup: TrainingSetup) -> None:
        self.masks = latent_masks(self.reference, setup.latent_size, self.dilation, self.region).to(setup.device)

    def enter_step(self, setup: TrainingSetup, step: int) -> None:
        self.active = step >= self.start

    def reduce(
        self, pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None, batch: Batch
    ) -> torch.Tensor | None:
        if batch.pick is None or not self.active:  # a fixed evaluation latent (no augmentation), or not yet
            return None
        return masked_mse(pred, target, self.masks[batch.pick], weights)


def edge_region(reference: Preprocessed) -> np.ndarray:
    """Boolean (H, W): the band along the reference's object's edge (`EdgeBand.region`), its frame included."""
    from ostaf.edge_band import EdgeBand
    from ostaf.mechanisms.views import foreground, plain_background

    mask = foreground(reference, needed_by="--mask-region edge")
    pixels = np.asarray(reference.image.convert("RGB"))
    return EdgeBand.of(pixels, mask, plain_background(reference.image)[1]).region(pixels, mask)


def latent_masks(
    reference: Preprocessed, latent_size: tuple[int, int], dilation: int, region: np.ndarray | None = None
) -> torch.Tensor:
    """(K, 1, h, w) float masks of `region` (default: the reference mask), one per augmentation of the reference,
    on the latent grid."""
    region = reference.mask if region is None else region
    masks = []
    for recipe in reference.recipes:
        pixels = torch.from_numpy(augment_mask(region, recipe, reference.attribute).astype(np.float32))
        cells = F.adaptive_max_pool2d(pixels[None, None], latent_size)  # (1, 1, h, w)
        if dilation:
            cells = F.max_pool2d(cells, 2 * dilation + 1, stride=1, padding=dilation)
        masks.append(cells)
    return torch.cat(masks)


def masked_mse(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, sample_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error over the masked latent cells only (every channel); mask (B, 1, h, w); each sample's
    cells weighted by `sample_weights` (B,) when given (--snr-gamma)."""
    weight = mask.expand_as(pred)
    cells = weight.sum().clamp(min=1.0)
    if sample_weights is not None:
        weight = weight * sample_weights.to(weight)[:, None, None, None]
    return ((pred - target) ** 2 * weight).sum() / cells
