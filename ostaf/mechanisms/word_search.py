"""Word search (`--token-search K`): start e* at the vocabulary word that best explains the reference.

Textual inversion from the attribute's own word ("shape") gets stuck: the denoising loss of the
reference is lowest at the right word ("a … object in the shape of a star") but the way there from
"shape" crosses words the model draws very differently, and gradient steps stay in the first basin
(in the Attribute World the token ends on crescents and rings whatever the reference's shape).
So before training e*'s word is chosen by a discrete search on the frozen base model, as in
AutoPrompt / GCG hard-prompt search: per round, every vocabulary row is ranked by the first-order
change of the loss, ``-(e_w - e*) · ∇L(e*)``, the top K are scored exactly on fixed (noise, timestep)
samples of the reference, and the best one becomes e*'s word if it lowers the loss. Training then
refines e* from there. The class prompt names the reference's other attributes, so the word found
fills the attribute's slot only. With `--timestep-range` the samples come from training's band: the
margin table (world v2) ranks the right shape word first there for 5 of 6 references.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch.nn import functional as F

from ostaf.mechanisms.base import BaseModel, Mechanism
from ostaf.mechanisms.timesteps import timestep_bounds
from ostaf.training_setup import autocast, noise_target, unet_conditioning

if TYPE_CHECKING:
    from ostaf.config import TrainConfig
    from ostaf.training_setup import TrainingSetup

log = logging.getLogger(__name__)


class SearchResult(NamedTuple):
    word_id: int  # the vocabulary row e*'s word now is; -1: no row beat the attribute's own word
    loss: float  # the reference's loss there
    start_loss: float  # the loss at the attribute word
    tried: int  # candidates scored exactly


class Samples(NamedTuple):
    noisy: torch.Tensor  # (S, 4, h, w)
    timesteps: torch.Tensor
    target: torch.Tensor
    pick: torch.Tensor  # (S,) which augmentation each draw is (SDXL: its time ids)


def fixed_samples(setup: TrainingSetup, count: int, seed: int) -> Samples:
    """`count` (augmentation, noise, timestep) draws, stratified in t over training's band (`--timestep-range`:
    the search scores words where training will look), from their own generator."""
    generator = torch.Generator().manual_seed(seed)
    scheduler = setup.noise_scheduler
    low, high = timestep_bounds(setup.config.timestep_range, scheduler.config.num_train_timesteps)
    pick = torch.randint(0, setup.latent_mean.shape[0], (count,), generator=generator)
    eps = torch.randn((count, *setup.latent_mean.shape[1:]), generator=generator).to(setup.device)
    noise = torch.randn(eps.shape, generator=generator).to(setup.device)
    offsets = torch.rand(count, generator=generator)
    timesteps = (low + (torch.arange(count) + offsets) * (high - low) / count).long().clamp(max=high - 1)
    timesteps = timesteps.to(setup.device)
    latents = (setup.latent_mean[pick] + setup.latent_std[pick] * eps) * setup.pipe.vae.config.scaling_factor
    target = noise_target(scheduler, latents, noise, timesteps)
    return Samples(scheduler.add_noise(latents, noise, timesteps), timesteps, target, pick.to(setup.device))


def reference_loss(setup: TrainingSetup, samples: Samples) -> torch.Tensor:
    """The training prompt's mean noise-prediction MSE on `samples`, with the live e*."""
    with autocast(setup):
        cond = unet_conditioning(setup, samples.noisy.shape[0], samples.pick)
        pred = setup.unet(samples.noisy.to(setup.unet.dtype), samples.timesteps, **cond.unet_kwargs()).sample
    return F.mse_loss(pred.float(), samples.target.float())


def candidate_rows(setup: TrainingSetup) -> torch.Tensor:
    """Vocabulary ids a word may be: every row before the placeholders, minus the special tokens."""
    ids = torch.arange(setup.token_id)
    special = torch.tensor(setup.prompts.tokenizer.all_special_ids)
    return ids[~torch.isin(ids, special)]


def search_word(setup: TrainingSetup, candidates: int, rounds: int, samples: int) -> SearchResult:
    """Move `setup.token`'s word to the best vocabulary row found (on the base model: λ = 0)."""
    token = setup.token
    rows = candidate_rows(setup)
    vocab = setup.prompts.rows(setup.token_id)[rows.to(setup.device)]  # every encoder's row of each word
    draws = fixed_samples(setup, samples, setup.config.seed)
    with setup.adapter.at(0.0) if setup.adapter is not None else nullcontext():  # the base model
        with torch.no_grad():
            best = reference_loss(setup, draws).item()
        start, best_index, tried = best, -1, 0  # best_index: a row of `vocab`; -1 = the attribute's own word
        for _ in range(rounds):
            word = token.word_embedding.clone()
            probe = torch.zeros_like(word, requires_grad=True)
            token.word_embedding = word + probe  # a non-leaf buffer for one backward: ∂L/∂e*
            try:
                (grad,) = torch.autograd.grad(reference_loss(setup, draws), probe)
            finally:
                token.word_embedding = word
            ranked = (-(vocab - word.float()) @ grad.float()).argsort(descending=True)[:candidates]
            improved = False
            with torch.no_grad():
                for index in ranked.tolist():
                    token.word_embedding = vocab[index].clone()
                    loss = reference_loss(setup, draws).item()
                    tried += 1
                    if loss < best:
                        best, best_index, improved = loss, index, True
                token.word_embedding = vocab[best_index].clone() if best_index >= 0 else word
            if not improved:
                break
    return SearchResult(int(rows[best_index]) if best_index >= 0 else -1, best, start, tried)


class WordSearch(Mechanism):
    """Before the first step, e*'s word moves to the vocabulary row that best denoises the reference."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    @classmethod
    def build(cls, config: TrainConfig, base: BaseModel) -> WordSearch | None:
        return cls(config) if config.token_search else None

    def attach(self, setup: TrainingSetup) -> None:
        c = self.config
        found = search_word(setup, c.token_search, c.token_search_rounds, c.token_search_samples)
        tokenizer = setup.prompts.tokenizer
        word = tokenizer.convert_ids_to_tokens(found.word_id) if found.word_id >= 0 else setup.attribute.word
        log.info(
            "word search: %s starts at %r (loss %.4f, %s's own word %.4f; %d words scored)",
            setup.attribute.token,
            word,
            found.loss,
            setup.attribute.name,
            found.start_loss,
            found.tried,
        )
