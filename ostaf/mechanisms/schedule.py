"""λ-aware training (`--train-lam uniform`) and token-first phases (`--token-steps N`).

With `uniform`, every sample of a micro-batch is trained at its own λ ~ U[0, 1] (the processors' per-sample
path, with gradients), so λ at generation is a strength the offsets were trained for, not an
extrapolation from λ = 1. With `token_steps = N`, steps 1…N train the token alone on the base model
(λ = 0 on the adapter, every other trainable frozen); from step N+1 the token is frozen and the rest trains.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

import torch

from ostaf.mechanisms.base import BaseModel, Mechanism

if TYPE_CHECKING:
    from ostaf.config import TrainConfig
    from ostaf.training_setup import Batch, TrainingSetup


def sample_lambda(setup: TrainingSetup, batch: int, generator: torch.Generator) -> torch.Tensor | None:
    """One λ per sample (uniform), or None: the adapter's own λ (fixed = 1, or 0 in the token phase)."""
    if setup.config.train_lam != "uniform" or in_token_phase(setup, setup.step):
        return None
    return torch.rand(batch, generator=generator)


def in_token_phase(setup: TrainingSetup, step: int) -> bool:
    return step < setup.config.token_steps


class TokenPhases(Mechanism):
    """`--token-steps N`: the token alone on the base model first, then everything else with the token frozen."""

    @classmethod
    def build(cls, config: TrainConfig, base: BaseModel) -> TokenPhases | None:
        return cls() if config.token_steps else None

    def enter_step(self, setup: TrainingSetup, step: int) -> None:
        """Set what trains at 0-based `step` (idempotent, so a resumed run lands in the right phase)."""
        token_phase = in_token_phase(setup, step)
        token_params = {id(p) for p in setup.token.parameters()}
        for p in setup.trainable:
            p.requires_grad_(token_phase == (id(p) in token_params))

    def forward(self, setup: TrainingSetup, batch: Batch) -> AbstractContextManager:
        """λ = 0 on the adapter in the token phase: the base model, whatever λ the batch drew."""
        return setup.adapter.at(0.0) if self.holds_base(setup) else nullcontext()

    def shares_pass(self, setup: TrainingSetup) -> bool:
        return not self.holds_base(setup)  # the views train at the adapter's own λ, not at the phase's 0

    @staticmethod
    def holds_base(setup: TrainingSetup) -> bool:
        return setup.adapter is not None and in_token_phase(setup, setup.step)
