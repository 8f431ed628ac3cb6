"""Composition by timestep split (`--compose-switch s`, after ProSpect, Zhang et al. 2023).

Layout and shape are decided in the early, noisy steps of denoising; colour and texture in the late ones
(ProSpect's observation, and the world's timestep margins). Composing a shape checkpoint with an
appearance one by running both everywhere lets each disturb the other's stage. With a switch s ∈ (0, 1),
for a U-Net call at timestep t:

    t ≥ s·T   (early)   the shape checkpoints act: their adapters at λ, their placeholders learned;
                        every other checkpoint's adapter at λ = 0 and its placeholder read as its nearest word
    t < s·T   (late)    the other way round

With `look_everywhere` (`--compose-look everywhere`) the other checkpoints act in the early steps too, so only
the shape's are switched off late: the noisy steps set the colours, and the shape checkpoint alone there draws
its own reference's (world v3, 4 named validation pairs: composed shape / look 0.75 / 0.63 split at s = 0.4,
0.88 / 0.75 with the look everywhere; but on 16 named test pairs 0.67 / 0.46 against 0.90 / 0.42 with both
everywhere: `benchmarks/results/world-v3/ablation/compose-look-everywhere-*-named/`).

A forward pre-hook on the U-Net (torch's public hook) reads each call's timestep, sets the adapters'
strengths through the strength protocol (restored when generation ends) and hands the U-Net the prompt
context of the call's phase, built as classifier-free guidance builds it. On SDXL the pooled text
embedding (one vector for the whole prompt) stays the pipeline's: both placeholders reach it in every step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

import torch

from ostaf.errors import OstafError
from ostaf.mechanisms.dual_path import VanillaPrompts
from ostaf.mechanisms.unet_call import with_context

if TYPE_CHECKING:
    from ostaf.conditioning import PromptEncoder
    from ostaf.strength import Scale, Strength

EARLY_ATTRIBUTES = ("shape",)  # the attributes whose checkpoints act in the early (noisy) steps


def check_attributes(attributes: list[str], switch: float) -> None:
    """One error unless the checkpoints split into an early (shape) and a late (appearance, style) group."""
    early = [a for a in attributes if a in EARLY_ATTRIBUTES]
    if not early or len(early) == len(attributes):
        raise OstafError(
            f"--compose-switch {switch:g} hands a shape checkpoint's steps to an appearance or style one, but the "
            f"checkpoints' attributes are {attributes}: give one shape checkpoint and one of another attribute "
            "(or drop --compose-switch)"
        )


class ComposeSwitch:
    """The phase split of one pipeline's checkpoints; `active` installs it for one denoising batch."""

    def __init__(
        self,
        unet,
        prompts: PromptEncoder,
        adapters: list[Strength],
        tokens: list[str],
        attributes: list[str],
        switch: float,
        num_train_timesteps: int,
        look_everywhere: bool = False,
    ) -> None:
        check_attributes(attributes, switch)
        self.unet, self.adapters = unet, adapters
        self.early = [a in EARLY_ATTRIBUTES for a in attributes]  # per checkpoint: does it act early
        self.look_everywhere = look_everywhere
        self.boundary = switch * num_train_timesteps
        late_tokens = [t for t, early in zip(tokens, self.early, strict=True) if not early]
        early_tokens = [t for t, early in zip(tokens, self.early, strict=True) if early]
        # early steps read the late checkpoints' placeholders as words (all learned with the look everywhere), and
        # the late steps the early ones'
        self.prompts = {True: VanillaPrompts(prompts, late_tokens), False: VanillaPrompts(prompts, early_tokens)}

    def is_early(self, timestep) -> bool:
        return float(torch.as_tensor(timestep).flatten()[0]) >= self.boundary

    def acts(self, acts_early: bool, early: bool) -> bool:
        """Whether a checkpoint (a shape's: `acts_early`) acts in a call of the early or the late phase."""
        return acts_early == early or (self.look_everywhere and not acts_early)

    @contextmanager
    def active(self, prompts: list[str], guidance: float, scales: list[Scale]) -> Iterator[None]:
        """Inside the block, each U-Net call runs its phase's adapters (at `scales`, the others at 0) on its
        phase's prompt context; the adapters' λ and the U-Net are as they were after it."""
        # with the look everywhere the early calls read the prompt as written: the pipeline's own context, kept
        phases = (False,) if self.look_everywhere else (True, False)
        contexts = {early: self.prompts[early].context(prompts, guidance) for early in phases}

        def before_call(module, args: tuple, kwargs: dict):
            timestep = kwargs["timestep"] if "timestep" in kwargs else args[1]
            early = self.is_early(timestep)
            for adapter, acts_early, scale in zip(self.adapters, self.early, scales, strict=True):
                adapter.set_scale(scale if self.acts(acts_early, early) else 0.0)
            context = contexts.get(early)
            if context is None:
                return None  # the call's own arguments
            return with_context(args, kwargs, context, "--compose-switch")

        with ExitStack() as stack:
            for adapter in self.adapters:
                stack.enter_context(adapter.at(adapter.scale))  # whatever the hook writes, put back after
            handle = self.unet.register_forward_pre_hook(before_call, with_kwargs=True)
            stack.callback(handle.remove)
            yield
