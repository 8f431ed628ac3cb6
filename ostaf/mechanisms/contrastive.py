"""Nearest-word contrastive token (`--nn-contrastive W`, Domain-Agnostic Tuning-Encoder, Arar et al. 2023).

An InfoNCE loss on the placeholder embedding e*: its positives are its k nearest vocabulary embeddings
by cosine (chosen anew each step, without gradient), its negatives the rest of a vocabulary sample; the
gradient reaches only e*. It keeps the token in the region of real words, which the paper reports keeps
the prompt in control. Negatives are drawn from a generator seeded by (run seed, step): the run's own
random stream is untouched and a resumed run draws the same ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

from ostaf.conditioning import vector_tokens
from ostaf.mechanisms.base import BaseModel, Mechanism

if TYPE_CHECKING:
    from ostaf.config import TrainConfig
    from ostaf.training_setup import Batch, TrainingSetup


class NearestWordContrast:
    def __init__(
        self, vocabulary: torch.Tensor, k: int, temperature: float, sample: int, seed: int, normalised: bool = False
    ) -> None:
        rows = vocabulary.detach().float()
        self.vocabulary = rows if normalised else F.normalize(rows, dim=-1)  # (V, d), the words before any placeholder
        self.k, self.temperature, self.sample, self.seed = k, temperature, sample, seed

    def similarities(self, embedding: torch.Tensor) -> torch.Tensor:
        """Cosine of e* with every vocabulary word, (V,)."""
        vocabulary = self.vocabulary.to(embedding.device)
        return vocabulary @ F.normalize(embedding.float(), dim=-1)

    def loss(self, embedding: torch.Tensor, step: int) -> torch.Tensor:
        cos = self.similarities(embedding)
        positives = cos.detach().topk(self.k).indices
        logits = cos / self.temperature
        if self.sample and self.sample < cos.shape[0] - self.k:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            candidates = torch.randperm(cos.shape[0], generator=generator).to(cos.device)
            candidates = candidates[~torch.isin(candidates, positives)][: self.sample]
            pool = torch.cat([positives, candidates])
        else:
            pool = torch.arange(cos.shape[0], device=cos.device)
        return torch.logsumexp(logits[pool], 0) - torch.logsumexp(logits[positives], 0)

    def nearest(self, embedding: torch.Tensor, count: int = 5) -> list[tuple[int, float]]:
        """The `count` nearest vocabulary ids with their cosine."""
        with torch.no_grad():
            values, ids = self.similarities(embedding).topk(count)
        return [(int(i), round(float(v), 4)) for i, v in zip(ids, values, strict=True)]


class NearestWordTerm(Mechanism):
    """Adds `--nn-contrastive` × the InfoNCE term on e*; names e*'s nearest words after training."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.contrast: NearestWordContrast | None = None

    @classmethod
    def build(cls, config: TrainConfig, base: BaseModel) -> NearestWordTerm | None:
        return cls(config) if config.nn_contrastive else None

    def attach(self, setup: TrainingSetup) -> None:
        c = self.config
        self.contrast = NearestWordContrast(
            setup.unit_vocabulary(), c.nn_k, c.nn_temperature, c.nn_vocab, c.seed, normalised=True
        )

    def loss(self, setup: TrainingSetup, batch: Batch, generator: torch.Generator | None) -> torch.Tensor:
        """The term on each vector of e*, averaged (one vector: the term itself)."""
        terms = [self.contrast.loss(row, setup.step) for row in vectors_of(setup.token())]
        return self.config.nn_contrastive * torch.stack(terms).mean()

    def words(self, setup: TrainingSetup, count: int = 5) -> list[str]:
        """e*'s nearest vocabulary words, as 'word (cosine)'; for several vectors one entry per vector
        ('*m_1: word (cosine), …')."""
        tokenizer = setup.prompts.tokenizer
        rows = vectors_of(setup.token().detach())
        named = [
            [f"{tokenizer.convert_ids_to_tokens(i)} ({cos})" for i, cos in self.contrast.nearest(row, count)]
            for row in rows
        ]
        if len(named) == 1:
            return named[0]
        tokens = vector_tokens(setup.attribute.token, len(named))
        return [f"{token}: {', '.join(words)}" for token, words in zip(tokens, named, strict=True)]


def vectors_of(embedding: torch.Tensor) -> list[torch.Tensor]:
    """A placeholder's rows: (D,) → [e*]; (N, D) → its N vectors."""
    return list(embedding.reshape(-1, embedding.shape[-1]))
