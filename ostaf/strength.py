"""One strength protocol for every adapter that carries an attribute (OSTAF offsets, LoRA).

λ is the adapter's strength: a number, one λ per sample (where the adapter can), a multiplier per
U-Net block, and — for the offsets — the dual path's β. Every writer (generation, training's
per-sample λ, the token phase, the word search, reference attention) changes it inside `at(λ)` or
`dual_path(β, …)`, which put back the value that was there before; `merged_at(λ)` folds it into the
weights for a batch. An adapter that cannot do something says so with one `OstafError` (`refusal`),
which configs check before any model loads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ostaf.errors import OstafError

if TYPE_CHECKING:
    import torch

    Scale = float | torch.Tensor

# what an adapter may be asked to do beyond one λ for a whole batch
PER_SAMPLE = "per-sample λ"  # a batch carrying one λ per sample (training's --train-lam uniform; mixed-λ batches)
DUAL_PATH = "the dual path"  # β·personalised + (1 − β)·vanilla (--dual-path)


@runtime_checkable
class Strength(Protocol):
    """What generation, training and the mechanisms drive λ through."""

    name: str
    features: frozenset[str]

    @property
    def scale(self) -> Scale: ...

    def set_scale(self, scale: Scale) -> None: ...

    def at(self, scale: Scale): ...

    def dual_path(self, beta: float, vanilla_context): ...

    def merge(self, scale: float) -> None: ...

    def unmerge(self) -> None: ...

    def merged_at(self, scale: float): ...

    def set_block_scales(self, scales: dict[str, float] | None) -> None: ...

    def blocks(self) -> list[str]: ...

    def caching(self): ...


def refusal(kind: str, feature: str) -> str | None:
    """Why an adapter of `kind` ("lora", "offsets", "none") cannot do `feature`, or None when it can."""
    if feature in FEATURES.get(kind, frozenset()):
        return None
    what = {
        "lora": "LoRA (one scale per forward, no offsets path)",
        "none": "a run that trains no weight offsets (nothing for λ to scale)",
        "fixed": "a checkpoint without weight offsets (a token or fine-tuned weights: nothing for λ to scale)",
        "token": "a placeholder blend (--token-lambda: one prompt encoding per λ, no offsets)",
    }
    return f"{feature} needs an adapter that supports it; {what.get(kind, kind)} does not"


def prediction_blend_refusal(token: str, trainable: str) -> str | None:
    """Why `--token-lambda-blend prediction` cannot drive the checkpoint of `token` (trained with `--trainable
    trainable`), or None: it weighs two prompts' predictions through one model, so the checkpoint may carry
    nothing but its placeholder (tuned weights or an adapter would act in both passes)."""
    from ostaf.config import TRAINABLE

    what = TRAINABLE.get(trainable, TRAINABLE["lite"])
    if what.blocks == "none" and what.adapter == "none":
        return None
    return (
        f"--token-lambda-blend prediction weighs the prompt read with the placeholder against the hard prompt on one "
        f"model; the {token} checkpoint (--trainable {trainable}) also trained U-Net weights or an adapter, which "
        "would act in both passes: use --token-lambda-blend row for it (its λ then scales what it trained too)"
    )


# "none": a training run without an adapter (the token, fine-tuning): λ options have nothing to act on.
# "fixed": such a checkpoint at generation: any λ per sample is the same model, so a mixed batch is fine.
# "token": a token checkpoint whose λ blends its placeholder (`TokenStrength`): one prompt encoding per λ.
FEATURES = {
    "offsets": frozenset({PER_SAMPLE, DUAL_PATH}),
    "lora": frozenset(),
    "none": frozenset(),
    "fixed": frozenset({PER_SAMPLE}),
    "token": frozenset(),
}


class HoldsStrength:
    """The strength protocol's shared half: λ with restore, β with restore, per-block multipliers,
    `merged_at`. Subclasses write λ into their layers (`_write_scale`), and implement `merge`/`unmerge`,
    `blocks()` and `caching()`."""

    kind = "none"
    name = ""
    block_scales: dict[str, float] | None = None  # block (``up_blocks.1``) → λ multiplier; None: 1 everywhere
    _scale: Scale = 1.0
    _beta: tuple[float, object] = (1.0, None)

    @property
    def features(self) -> frozenset[str]:
        return FEATURES[self.kind]

    @property
    def per_sample(self) -> bool:
        return PER_SAMPLE in self.features

    def require(self, feature: str) -> None:
        reason = refusal(self.kind, feature)
        if reason:
            raise OstafError(f"{self.name}: {reason}")

    # -- λ ----------------------------------------------------------------------
    @property
    def scale(self) -> Scale:
        """The λ the following forwards use (as last set)."""
        return self._scale

    def set_scale(self, scale: Scale) -> None:
        """λ for the following forwards: a number, or a 1-D tensor with one λ per sample."""
        import torch

        if torch.is_tensor(scale):
            if not torch.isfinite(scale).all():
                raise OstafError(f"λ must be finite numbers, got {scale.tolist()}")
            if scale.ndim and scale.numel() > 1 and scale.flatten().unique().numel() > 1:
                self.require(PER_SAMPLE)
        elif not isinstance(scale, (int, float)) or not torch.isfinite(torch.tensor(float(scale))):
            raise OstafError(f"λ must be a finite number, got {scale!r}")
        self._write_scale(scale)
        self._scale = scale

    def _write_scale(self, scale: Scale) -> None:
        raise NotImplementedError

    @contextmanager
    def at(self, scale: Scale) -> Iterator[None]:
        """λ = `scale` inside the block, the previous λ after it (also on an error)."""
        previous = self._scale
        self.set_scale(scale)
        try:
            yield
        finally:
            self.set_scale(previous)

    # -- β ----------------------------------------------------------------------
    def set_dual_path(self, beta: float, vanilla_context) -> None:
        if not 0.0 <= beta <= 1.0:
            raise OstafError(f"dual path β must be in [0, 1], got {beta}")
        if beta < 1.0:
            self.require(DUAL_PATH)
        self._write_dual_path(float(beta), vanilla_context if beta < 1.0 else None)
        self._beta = (float(beta), vanilla_context if beta < 1.0 else None)

    def _write_dual_path(self, beta: float, vanilla_context) -> None:
        """Nothing to write for an adapter without the dual path (β = 1 is the only value it accepts)."""

    @contextmanager
    def dual_path(self, beta: float, vanilla_context) -> Iterator[None]:
        """β (and the vanilla prompt's context) inside the block, the previous ones after it."""
        previous = self._beta
        self.set_dual_path(beta, vanilla_context)
        try:
            yield
        finally:
            self.set_dual_path(*previous)

    # -- per block and merged -------------------------------------------------------
    def set_block_scales(self, scales: dict[str, float] | None) -> None:
        """Multiply λ per U-Net block from now on (the way diffusers' `set_adapters` takes per-block scales)."""
        scales = dict(scales or {})
        unknown = sorted(set(scales) - set(self.blocks()))
        if unknown:
            raise OstafError(
                f"per-block λ names {unknown}, but {self.name} only modulates {self.blocks()}: pick among those"
            )
        self.block_scales = scales or None
        self.set_scale(self._scale)

    def block_scale(self, module_name: str) -> float:
        from ostaf.offsets.config import block_of

        return 1.0 if not self.block_scales else self.block_scales.get(block_of(module_name), 1.0)

    def blocks(self) -> list[str]:
        raise NotImplementedError

    def merge(self, scale: float) -> None:
        raise NotImplementedError

    def unmerge(self) -> None:
        raise NotImplementedError

    @contextmanager
    def merged_at(self, scale: float) -> Iterator[None]:
        self.merge(scale)
        try:
            yield
        finally:
            self.unmerge()


class FixedStrength(HoldsStrength):
    """The λ of a checkpoint with no weights for λ to scale (a learned token, fine-tuned U-Net weights): λ is
    accepted and changes nothing, as the paper's baselines hold ΔW at 0; per-block λ and the dual path are
    refused with one error."""

    kind = "fixed"

    def __init__(self, token: str, trainable: str) -> None:
        self.name = f"{token} ({trainable})"
        self.merged = False

    def _write_scale(self, scale: Scale) -> None:
        """Nothing to write: no layer carries this checkpoint's λ."""

    def blocks(self) -> list[str]:
        return []

    def merge(self, scale: float) -> None:
        self.merged = True

    def unmerge(self) -> None:
        self.merged = False

    def caching(self):
        from contextlib import nullcontext

        return nullcontext()


class TokenStrength(FixedStrength):
    """λ of a checkpoint without weight offsets as a blend of its placeholder (`--token-lambda`): the row is
    (1 − λ)·e_word + λ·e*, e_word the vocabulary word nearest to e* (cosine; per vector of a placeholder of
    several) — λ = 0 is that hard prompt — or the attribute's own word (`--token-lambda-origin attribute`:
    λ = 0 names no value); λ = 1 the learned token, past 1 an extrapolation. The text encoder reads the row when
    a prompt is encoded, so one batch carries one λ (a sweep is one batch per λ, as for LoRA). With
    `blend="prediction"` (`--token-lambda-blend prediction`) the row stays e* at every λ and λ weighs the noise
    predictions of the two prompts instead (`ostaf.mechanisms.prediction_blend`)."""

    kind = "token"

    def __init__(
        self,
        token: str,
        trainable: str,
        prompts,
        token_id: int,
        learned: torch.Tensor,
        origin=None,
        blend: str = "row",
    ) -> None:
        """`origin`: the row λ = 0 reads (`--token-lambda-origin attribute`: the attribute word's, for every
        vector); None for each vector's nearest word. `blend`: row, or prediction (the row is left learned)."""
        from ostaf.mechanisms.dual_path import nearest_words

        super().__init__(token, trainable)
        self.prompts, self.token_id, self.blend = prompts, token_id, blend
        self.learned = learned.detach().float()
        if origin is None:
            vocabulary = prompts.rows(prompts.tokenizer.vocab_size)  # the words, no placeholder among them
            self.word_ids = nearest_words(self.learned, vocabulary)
            self.word = vocabulary[self.word_ids].reshape(self.learned.shape).to(self.learned.device)
        else:
            rows = self.learned.reshape(-1, self.learned.shape[-1])
            self.word_ids = None
            self.word = origin.detach().float().to(rows.device).expand_as(rows).reshape(self.learned.shape)

    def _write_scale(self, scale: Scale) -> None:
        import torch

        if self.blend == "prediction":  # the prompt reads e*; λ weighs the two prompts' predictions (PredictionBlend)
            self.prompts.write_row(self.token_id, self.learned)
            return
        lam = float(scale.flatten()[0]) if torch.is_tensor(scale) else float(scale)  # one λ (checked above)
        self.prompts.write_row(self.token_id, self.word + lam * (self.learned - self.word))

    def merge(self, scale: float) -> None:
        self._write_scale(scale)
        self.merged = True

    def unmerge(self) -> None:
        self._write_scale(self._scale)
        self.merged = False


class WeightBlendStrength(TokenStrength):
    """`--token-lambda` on a fine-tuned checkpoint (`blocks`, `unet`): λ blends the U-Net weights that trained
    too, W(λ) = W₀ + λ·(W₁ − W₀) from the base model's W₀ to the tuned W₁, with the placeholder's blend — so
    λ = 0 is the base model with the hard prompt, λ = 1 the fine-tuned model, in between a strength. One λ per
    batch (the weights are shared by the batch)."""

    def __init__(self, token: str, trainable: str, prompts, token_id: int, learned, weights: dict, origin=None) -> None:
        """`weights`: name → (the U-Net parameter, its base W₀, its tuned W₁)."""
        super().__init__(token, trainable, prompts, token_id, learned, origin)
        self.weights = weights
        self.written: float | None = None  # the λ the weights hold (a composition sets λ before every U-Net call)

    def _write_scale(self, scale: Scale) -> None:
        import torch

        super()._write_scale(scale)
        lam = float(scale.flatten()[0]) if torch.is_tensor(scale) else float(scale)
        if lam == self.written:
            return
        with torch.no_grad():
            for param, base, tuned in self.weights.values():
                param.copy_(torch.lerp(base, tuned, lam).to(param.dtype))
        self.written = lam
