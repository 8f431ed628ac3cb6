"""λ of a token as a weight on its guidance (`--token-lambda --token-lambda-blend prediction`).

`--token-lambda` alone blends the placeholder's *row*, (1 − λ)·e_word + λ·e*: the text encoder reads a vector
halfway between two words, which it may draw as a third thing (world v3: a learned style token's blend from the
attribute's word draws a frame in a wrong colour at λ = 0.5, farther from the reference than no frame). Blending
the *noise prediction* instead keeps both ends real prompts and makes λ a weight on the difference between them,
as classifier-free guidance weighs a prompt against the empty one (and Composable Diffusion one concept against
the rest):

    ε(λ) = ε_word + λ · (ε* − ε_word)

ε* is the U-Net on the prompt as learned, ε_word on the prompt with every placeholder read as its λ = 0 word (the
nearest vocabulary word, or the attribute's own with `--token-lambda-origin attribute`). With guidance g the
pipeline then makes ε_u + g·(ε(λ) − ε_u) = ε_u + g·(ε_word − ε_u) + λ·g·(ε* − ε_word): λ = 0 is the hard prompt,
λ = 1 exactly the learned token (no second pass is run there), past 1 an extrapolation of the attribute.

A forward hook on the U-Net (torch's public hook) runs the second pass with the hard prompt's context and blends
the two outputs; the unconditional half is the same prompt in both, so it is unchanged. One more U-Net pass per
step where λ ≠ 1. On SDXL the hard pass also gets the hard prompt's pooled embedding (`text_embeds`), so λ = 0 is
that prompt exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from ostaf.conditioning import Conditioning, PromptEncoder
from ostaf.errors import OstafError
from ostaf.mechanisms.unet_call import output_sample, with_context, with_sample

if TYPE_CHECKING:
    from ostaf.strength import TokenStrength


class PredictionBlend:
    """The hard prompt's context for a batch of prompts, and the hook that blends the two noise predictions."""

    def __init__(self, unet, prompts: PromptEncoder, strengths: list[TokenStrength]) -> None:
        if not strengths:
            raise OstafError("--token-lambda-blend prediction blends a token checkpoint's prompt: pass --ckpt DIR")
        self.unet, self.prompts, self.strengths = unet, prompts, strengths
        self._inside = False  # the hook's own second pass must not blend again

    @torch.no_grad()
    def hard_context(self, prompts: list[str], guidance: float) -> Conditioning:
        """The prompts encoded with each placeholder's rows at its λ = 0 word (the strength's own origin), as
        classifier-free guidance batches them ([unconditional, hard] when guidance > 1); the learned rows are put
        back. SDXL: with the pooled embedding (its time ids are the pipeline's)."""
        try:
            for strength in self.strengths:
                self.prompts.write_row(strength.token_id, strength.word)
            hard = self.prompts.encode(self.prompts.ids(prompts))
        finally:
            for strength in self.strengths:
                self.prompts.write_row(strength.token_id, strength.learned)
        if guidance <= 1.0:
            return hard
        empty = self.prompts.unconditional(len(prompts))
        pooled = None if hard.pooled is None else torch.cat([empty.pooled, hard.pooled])
        return Conditioning(torch.cat([empty.states, hard.states]), pooled)

    @contextmanager
    def active(self, prompts: list[str], guidance: float, lam: float) -> Iterator[None]:
        """Inside the block each U-Net call returns ε_word + λ·(ε* − ε_word); at λ = 1 the U-Net is left alone."""
        if lam == 1.0:
            yield
            return
        hard_prompt = self.hard_context(prompts, guidance)
        context = hard_prompt.states

        def after_call(module, args: tuple, kwargs: dict, output):
            if self._inside:
                return None
            added = kwargs.get("added_cond_kwargs")
            if hard_prompt.pooled is not None and added and "text_embeds" in added:
                pooled = added["text_embeds"]
                kwargs = kwargs | {"added_cond_kwargs": added | {"text_embeds": hard_prompt.pooled.to(pooled)}}
            args, kwargs = with_context(args, kwargs, context, "--token-lambda-blend prediction")
            self._inside = True
            try:
                hard = output_sample(module(*args, **kwargs))
            finally:
                self._inside = False
            learned = output_sample(output)
            return with_sample(output, hard + lam * (learned - hard))

        handle = self.unet.register_forward_hook(after_call, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
