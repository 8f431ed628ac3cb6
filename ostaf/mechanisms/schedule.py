"""λ-aware training (`--train-lam uniform`) and token-first phases (`--token-steps N`).

With `uniform`, every sample of a micro-batch is trained at its own λ ~ U[0, 1] (the processors' per-sample
path, with gradients), so λ at generation is a strength the offsets were trained for, not an
extrapolation from λ = 1. With `token_steps = N`, steps 1…N train the token alone on the base model
(λ = 0 on the adapter, every other trainable frozen); from step N+1 the token is frozen and the rest trains.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ostaf.train import TrainingSetup


def sample_lambda(setup: TrainingSetup, batch: int, generator: torch.Generator) -> torch.Tensor | None:
    """One λ per sample (uniform), or None: the adapter's own λ (fixed = 1, or 0 in the token phase)."""
    if setup.config.train_lam != "uniform" or in_token_phase(setup, setup.step):
        return None
    return torch.rand(batch, generator=generator)


def in_token_phase(setup: TrainingSetup, step: int) -> bool:
    return step < setup.config.token_steps


def enter_step(setup: TrainingSetup, step: int) -> None:
    """Set what trains at 0-based `step` (idempotent, so a resumed run lands in the right phase)."""
    setup.step = step
    if not setup.config.token_steps:
        return
    token_phase = in_token_phase(setup, step)
    token_params = {id(p) for p in setup.token.parameters()}
    for p in setup.trainable:
        p.requires_grad_(token_phase == (id(p) in token_params))
    # λ = 0 in the token phase: `denoising_loss` holds it for each forward (`adapter.at`)
