"""The one interface every training mechanism implements; the training loop calls only these hooks.

A mechanism's life in a run, in the order `ostaf.train` calls the hooks:

    build(config, base)     classmethod: None when the config leaves it off (an off mechanism builds
                            nothing and draws no random numbers); `base` is the untouched base model,
                            before any adapter or placeholder is installed (prior images are drawn there)
    attach(setup)           once the setup exists: install probes, read the vocabulary, search a word
    enter_step(setup, s)    before step s (0-based; idempotent, so a resumed run lands in the right phase)
    frames(setup, batch, g) extra whole frames of the micro-batch (views, prior images), drawn from the run's
                            generator g right after it; denoised in the reference's U-Net pass, their
                            weighted MSE added to the loss (a term that extends the batch, not a second pass)
    shares_pass(setup)      False where `forward` acts on the whole U-Net pass in a way that belongs to the
                            reference's samples alone: the frames then get a pass of their own
    forward(setup, batch)   a context manager around each denoising forward (λ held, probes recording)
    reduce(...)             may replace the noise-prediction MSE's reduction (a masked mean)
    loss(setup, batch, g)   an extra loss term, read after the forward (its probes), already weighted, or None
    words(setup)            what to tell the user after training (e*'s nearest words)
    close(setup)            undo what `attach` installed, leaving the pipeline as `apply` would

Every hook has a no-op default, so a mechanism writes only what it does. A new mechanism is a class in its
module and a line in `ostaf.mechanisms.registry.REGISTRY`; `train.py` does not change.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ostaf.conditioning import PromptEncoder
    from ostaf.config import TrainConfig
    from ostaf.models import Pipeline
    from ostaf.preprocess import Preprocessed
    from ostaf.training_setup import Batch, Frames, TrainingSetup


@dataclass(frozen=True)
class BaseModel:
    """What `build` may read: the base model before any adapter or placeholder, and the reference."""

    pipe: Pipeline
    prompts: PromptEncoder
    reference: Preprocessed
    model_key: str  # the base model's identity for caches (its name, and a random preset's seed)
    resolution: int  # the training resolution


class Mechanism:
    """No-op hooks; a mechanism overrides the ones it needs."""

    @classmethod
    def build(cls, config: TrainConfig, base: BaseModel) -> Mechanism | None:
        raise NotImplementedError

    def attach(self, setup: TrainingSetup) -> None:
        pass

    def enter_step(self, setup: TrainingSetup, step: int) -> None:
        pass

    def frames(self, setup: TrainingSetup, batch: Batch, generator: torch.Generator | None) -> Frames | None:
        return None

    def shares_pass(self, setup: TrainingSetup) -> bool:
        return True

    def forward(self, setup: TrainingSetup, batch: Batch) -> AbstractContextManager:
        return nullcontext()

    def reduce(
        self, pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None, batch: Batch
    ) -> torch.Tensor | None:
        return None

    def loss(self, setup: TrainingSetup, batch: Batch, generator: torch.Generator | None) -> torch.Tensor | None:
        return None

    def words(self, setup: TrainingSetup) -> list[str]:
        return []

    def close(self, setup: TrainingSetup) -> None:
        pass
