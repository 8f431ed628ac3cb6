"""Masked denoising loss (`--masked-loss`): the background of the reference is not learned.

The reference mask follows each augmentation (`augment_mask`), is reduced to the latent grid
(a latent cell is foreground if any of its pixels is) and grown by `mask_dilation` cells.
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
    """The noise-prediction MSE as a mean over each sample's foreground cells."""

    def __init__(self, reference: Preprocessed, dilation: int) -> None:
        self.reference, self.dilation = reference, dilation
        self.masks: torch.Tensor | None = None  # (K, 1, h, w) per augmentation, dilated

    @classmethod
    def build(cls, config: TrainConfig, base: BaseModel) -> MaskedLoss | None:
        return cls(base.reference, config.mask_dilation) if config.masked_loss else None

    def attach(self, setup: TrainingSetup) -> None:
        self.masks = latent_masks(self.reference, setup.latent_size, self.dilation).to(setup.device)

    def reduce(
        self, pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None, batch: Batch
    ) -> torch.Tensor | None:
        if batch.pick is None:  # a fixed evaluation latent: no augmentation to take the mask of
            return None
        return masked_mse(pred, target, self.masks[batch.pick], weights)


def latent_masks(reference: Preprocessed, latent_size: tuple[int, int], dilation: int) -> torch.Tensor:
    """(K, 1, h, w) float masks, one per augmentation of the reference, on the latent grid."""
    masks = []
    for recipe in reference.recipes:
        pixels = torch.from_numpy(augment_mask(reference.mask, recipe, reference.attribute).astype(np.float32))
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
