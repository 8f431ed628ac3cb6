"""Dual path (`--dual-path β`, Domain-Agnostic Tuning-Encoder, Arar et al. 2023), for training and generation.

Each targeted attention layer computes its output twice — the personalised path (offsets at λ, the learned
token) and the vanilla path (no offsets; in cross-attention, the prompt with every placeholder replaced by
its nearest vocabulary word) — and blends β·personalised + (1 − β)·vanilla: `DualPathProcessor`, a wrapper
around each targeted layer's stack (`ostaf.processors`), installed and removed by the offsets adapter's
`dual_path(β, context)` (the strength protocol). β = 1 is exactly the model without it. The vanilla context
carries no gradient: only the personalised path trains. Cost: a second attention in every targeted layer,
and one text-encoder pass for the hard prompt.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

from ostaf.mechanisms.base import BaseModel, Mechanism
from ostaf.training_setup import autocast

if TYPE_CHECKING:
    from ostaf.conditioning import PromptEncoder
    from ostaf.config import TrainConfig
    from ostaf.training_setup import Batch, TrainingSetup


def nearest_words(rows: torch.Tensor, vocabulary: torch.Tensor, normalised: bool = False) -> list[int]:
    """The nearest vocabulary id (cosine) of each row of `rows` ((D,) or (N, D): a placeholder's vectors;
    `normalised`: the vocabulary's rows are unit already)."""
    with torch.no_grad():
        words = vocabulary if normalised else F.normalize(vocabulary.float(), dim=-1)
        cos = F.normalize(rows.float().to(vocabulary.device).reshape(-1, rows.shape[-1]), dim=-1) @ words.T
    return cos.argmax(-1).tolist()


def hard_ids(input_ids: torch.Tensor, replace: dict[int, int]) -> torch.Tensor:
    """`input_ids` with each placeholder id replaced by its word's id."""
    out = input_ids.clone()
    for token_id, word_id in replace.items():
        out[input_ids == token_id] = word_id
    return out


class DualPathProcessor:
    """β · (the stack it wraps) + (1 − β) · (the same stack with its offsets at λ = 0 and, in cross-attention,
    the vanilla context). Outside a reference attention (both paths see the reference), inside a probe."""

    stack_order = 20

    def __init__(self, inner, beta: float, vanilla_context: torch.Tensor | None) -> None:
        self.inner, self.beta, self.vanilla_context = inner, beta, vanilla_context

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        from ostaf.errors import OstafError
        from ostaf.processors import innermost

        out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        offsets = innermost(self.inner)
        if offsets.merged_scale is not None:
            raise OstafError("the dual path needs unmerged offsets (its vanilla path has none): unmerge() first")
        context = None
        if encoder_hidden_states is not None:  # cross-attention: the hard prompt's context
            if self.vanilla_context is None:
                raise OstafError("the dual path needs the vanilla prompt's context: OffsetsAdapter.set_dual_path")
            context = self.vanilla_context.to(encoder_hidden_states.dtype)
            context = context.expand(encoder_hidden_states.shape[0], -1, -1) if context.shape[0] == 1 else context
        with offsets.at_zero():
            vanilla = self.inner(attn, hidden_states, context, attention_mask, temb, **kwargs)
        return self.beta * out + (1 - self.beta) * vanilla


class VanillaPrompts:
    """The vanilla path's text context for generation prompts, with the checkpoints' placeholders hard-coded."""

    def __init__(self, prompts: PromptEncoder, tokens: list[str]) -> None:
        self.prompts = prompts
        ids = [i for t in tokens for i in prompts.token_ids(t)]  # every vector of every placeholder
        table = prompts.rows(max(ids) + 1)  # every encoder's row, concatenated: e* lives in all of them
        vocabulary = table[: min(ids)]  # the words before any placeholder
        self.replace = dict(zip(ids, nearest_words(table[ids], vocabulary), strict=True))

    @property
    def words(self) -> dict[str, str]:
        """placeholder → its nearest word (what the vanilla path reads instead)."""
        tokenizer = self.prompts.tokenizer
        return {
            tokenizer.convert_ids_to_tokens(t): tokenizer.convert_ids_to_tokens(w).removesuffix("</w>")
            for t, w in self.replace.items()
        }

    @torch.no_grad()
    def context(self, prompts: list[str], guidance: float) -> torch.Tensor:
        """(B, T, D), or (2B, T, D) as [unconditional, vanilla] when classifier-free guidance doubles the batch
        (the unconditional half as the pipeline makes it: SDXL's base model zeroes it)."""
        vanilla = self.prompts.encode(hard_ids(self.prompts.ids(prompts), self.replace)).states
        if guidance <= 1.0:
            return vanilla
        return torch.cat([self.prompts.unconditional(len(prompts)).states, vanilla])


class DualPathTraining(Mechanism):
    """Training through the dual path: the adapter blends β·personalised + (1 − β)·vanilla in every forward."""

    def __init__(self, beta: float) -> None:
        self.beta = beta
        self.vocabulary: torch.Tensor | None = None  # (V, D) unit rows of the words before the placeholder
        self.vanilla: tuple[list[int], torch.Tensor] | None = None  # (nearest words, their hard prompt's context)

    @classmethod
    def build(cls, config: TrainConfig, base: BaseModel) -> DualPathTraining | None:
        return cls(config.dual_path) if config.dual_path < 1.0 else None

    def attach(self, setup: TrainingSetup) -> None:
        self.vocabulary = setup.unit_vocabulary()

    def forward(self, setup: TrainingSetup, batch: Batch) -> AbstractContextManager:
        if setup.adapter is None:
            return nullcontext()
        return setup.adapter.dual_path(self.beta, self.vanilla_context(setup))

    def shares_pass(self, setup: TrainingSetup) -> bool:
        return setup.adapter is None  # the vanilla path's context is the training prompt's, not the frames'

    @torch.no_grad()
    def vanilla_context(self, setup: TrainingSetup) -> torch.Tensor:
        """The hard prompt: the training prompt with e* replaced by its nearest word now (each vector by its own),
        (1, T, D); reused while the nearest words hold (the frozen text encoder gives the same context again)."""
        words = nearest_words(setup.token(), self.vocabulary, normalised=True)
        if self.vanilla is None or self.vanilla[0] != words:
            replace = {setup.token_id + vector: word for vector, word in enumerate(words)}
            with autocast(setup):
                context = setup.prompts.encode(hard_ids(setup.input_ids, replace)).states
            self.vanilla = (words, context)
        return self.vanilla[1]
