"""λ-sweep generation: prompts × seeds × λ → images and one labelled grid per prompt.

Several λ share one denoising batch (per-sample λ); a batch whose samples all
have the same λ runs with the offsets merged into the weights, at the cost of
the base model.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)
from PIL import Image

from ostaf.attributes import ATTRIBUTES
from ostaf.checkpoint import apply, load_base_pipeline, load_checkpoint
from ostaf.conditioning import PromptEncoder
from ostaf.config import ADAPTER_OF, DEFAULT_MODEL, SCHEDULERS, TRAINABLE, GenerateConfig, Trainable
from ostaf.errors import OstafError
from ostaf.images import load_image, make_grid
from ostaf.mechanisms.compose_switch import ComposeSwitch, check_attributes
from ostaf.mechanisms.dual_path import VanillaPrompts
from ostaf.mechanisms.prediction_blend import PredictionBlend
from ostaf.mechanisms.reference_attention import ReferenceAttention, resolve_blocks
from ostaf.model_spec import is_preset
from ostaf.models import Pipeline, base_of, load_pipeline, native_resolution
from ostaf.offsets.config import parse_block_scales
from ostaf.preflight import check_generate_inputs
from ostaf.preprocess import load_preprocessed
from ostaf.runtime import autocast_dtype, progress_bar, resolve_device
from ostaf.strength import DUAL_PATH, Strength, prediction_blend_refusal, refusal
from ostaf.sweep import PromptResult, write_sweep

log = logging.getLogger(__name__)
# the sampler names live in `ostaf.config.SCHEDULERS` (torch-free: CLI choices); here, their diffusers classes
SCHEDULER_CLASSES = dict(
    zip(SCHEDULERS, (DDIMScheduler, PNDMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler), strict=True)
)


@dataclass(frozen=True)
class Sample:
    prompt: str
    lam: float
    seed: int


@dataclass
class GenerationOptions:
    """What one generation call adds to a plain pipeline call: a strength per checkpoint (--lam-per-ckpt) and
    the generation-time mechanisms that are on (ostaf.mechanisms); the default is none, today's generation."""

    dual_path: float = 1.0  # β; < 1 needs `vanilla`
    vanilla: VanillaPrompts | None = None
    strengths: list[float] | None = None  # one λ multiplier per adapter (--lam-per-ckpt); None: 1 each
    reference: ReferenceAttention | None = None  # self-subject-attention, installed on the pipeline
    reference_lambda: bool = False  # the reference's weight is ω·λ (--reference-lambda)
    compose: ComposeSwitch | None = None  # --compose-switch: each checkpoint acts in its part of the schedule
    prediction: PredictionBlend | None = None  # --token-lambda-blend prediction: λ weighs two prompts' predictions

    @property
    def unmerged(self) -> bool:
        """Whether the offsets must stay unmerged (the vanilla path and the reference pass run without them), or
        λ must reach a mechanism of the U-Net call (the prediction blend) rather than the weights."""
        return (
            self.dual_path < 1.0
            or self.reference is not None
            or self.compose is not None
            or self.prediction is not None
        )

    @classmethod
    def from_config(
        cls,
        config: GenerateConfig,
        pipe: Pipeline,
        tokens: list[str],
        adapters: list,
        reference: str,
        attributes: list[str] | None = None,
    ) -> GenerationOptions:
        options = cls(strengths=list(config.lam_per_ckpt) or None, reference_lambda=config.reference_lambda)
        if config.blends_predictions:
            options.prediction = PredictionBlend(pipe.unet, PromptEncoder(pipe), adapters)
        if config.compose_switch:
            options.compose = ComposeSwitch(
                pipe.unet,
                PromptEncoder(pipe),
                adapters,
                tokens,
                attributes or [],
                config.compose_switch,
                pipe.scheduler.config.num_train_timesteps,
                look_everywhere=config.compose_look == "everywhere",
            )
        if config.dual_path < 1.0:
            if not tokens:
                raise OstafError("--dual-path blends a checkpoint's offsets with the base model: pass --ckpt DIR")
            options.dual_path = config.dual_path
            options.vanilla = VanillaPrompts(PromptEncoder(pipe), tokens)
            log.info("dual path: the vanilla path reads %s", options.vanilla.words)
        if config.reference_attention > 0:
            image, mask = load_reference_image(reference)
            options.reference = ReferenceAttention(
                pipe,
                adapters,
                image,
                mask,
                config.reference_attention,
                resolve_blocks(config.reference_blocks, tokens),
                config.resolution or None,
            )
        return options

    def close(self) -> None:
        if self.reference is not None:
            self.reference.remove()


def load_reference_image(path: str) -> tuple[Image.Image, np.ndarray]:
    """A preprocessed folder (its cut-out reference and mask), or an image file (all of it is the subject)."""
    if not path:
        raise OstafError(
            "--reference-attention needs --reference-image PATH (an image, or an `ostaf preprocess` folder)"
        )
    if Path(path).is_dir():
        reference = load_preprocessed(path)
        return reference.image, reference.mask
    image = load_image(path)
    return image, np.ones((image.height, image.width), bool)


def sweep(
    pipe: Pipeline,
    adapters: list[Strength],
    prompt: str,
    lams: list[float],
    seeds: list[int],
    num_steps: int = 50,
    guidance: float = 7.5,
    resolution: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
    options: GenerationOptions | None = None,
) -> PromptResult:
    """Images of one prompt for every (λ, seed), in batches of up to `batch_size` samples."""
    samples = [Sample(prompt, lam, seed) for seed in seeds for lam in lams]
    images: dict[tuple[float, int], Image.Image] = {}
    batches = [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]
    for batch in progress_bar(batches, disable=not progress, desc=prompt[:40], unit="batch"):
        made = run_batch(pipe, adapters, batch, num_steps, guidance, resolution, options)
        for sample, image in zip(batch, made, strict=True):
            images[(sample.lam, sample.seed)] = image
    rows = [[images[(lam, seed)] for lam in lams] for seed in seeds]
    grid = make_grid(rows, [f"λ={lam:g}" for lam in lams], [f"seed {s}" for s in seeds])
    return PromptResult(prompt, images, grid)


def run_batch(
    pipe: Pipeline,
    adapters: list[Strength],
    batch: list[Sample],
    num_steps: int,
    guidance: float,
    resolution: int | None,
    options: GenerationOptions | None = None,
) -> list[Image.Image]:
    """One denoising batch; each sample gets its own seed's noise and its own λ."""
    options = options or GenerationOptions()
    if len({s.lam for s in batch}) > 1 and not all(a.per_sample for a in adapters):
        made: dict[int, Image.Image] = {}  # LoRA: one λ per forward, so one batch per λ, in the batch's order
        for lam in sorted({s.lam for s in batch}):
            part = [s for s in batch if s.lam == lam]
            images = run_batch(pipe, adapters, part, num_steps, guidance, resolution, options)
            made.update({id(s): image for s, image in zip(part, images, strict=True)})
        return [made[id(s)] for s in batch]
    size = resolution or native_resolution(pipe)
    generators = [torch.Generator().manual_seed(s.seed) for s in batch]
    lams = {s.lam for s in batch}
    kwargs = dict(
        prompt=[s.prompt for s in batch],
        generator=generators,
        num_inference_steps=num_steps,
        guidance_scale=guidance,
        height=size,
        width=size,
    )
    strengths = options.strengths or [1.0] * len(adapters)
    if len(lams) == 1 and not options.unmerged:  # one λ: fold it into the weights
        lam = lams.pop()
        with ExitStack() as stack:
            for adapter, strength in zip(adapters, strengths, strict=True):
                if not adapter.merged:
                    stack.enter_context(adapter.merged_at(lam * strength))
            return pipe(**kwargs).images
    scale = torch.tensor([s.lam for s in batch], dtype=torch.float32) if len(lams) > 1 else float(next(iter(lams)))
    with ExitStack() as stack:
        if options.reference is not None and options.reference_lambda:
            options.reference.state.lam = scale
            stack.callback(setattr, options.reference.state, "lam", None)
        for adapter, strength in zip(adapters, strengths, strict=True):
            stack.enter_context(adapter.at(scale * strength))
            stack.enter_context(adapter.caching())  # W ⊙ ΔW once per sweep, not once per step
        if options.dual_path < 1.0:
            context = options.vanilla.context(kwargs["prompt"], guidance)
            for adapter in adapters:
                stack.enter_context(adapter.dual_path(options.dual_path, context))
        if options.compose is not None:
            scales = [scale * strength for strength in strengths]
            stack.enter_context(options.compose.active(kwargs["prompt"], guidance, scales))
        if options.prediction is not None:  # a token's λ: one per batch (the batch was split per λ above)
            stack.enter_context(options.prediction.active(kwargs["prompt"], guidance, float(scale)))
        return pipe(**kwargs).images


def switchable(trainable: Trainable, token_lambda: bool) -> bool:
    """Whether `--compose-switch` can turn a checkpoint off outside its steps: its adapter at λ = 0, and its
    fine-tuned weights (if any) back at the base model's, which only `--token-lambda`'s blend can do (and only
    for a checkpoint without offsets or LoRA: the blend is the strength of a checkpoint with no adapter)."""
    return trainable.blocks == "none" or (token_lambda and trainable.adapter == "none")


def check_adapters_can(config: GenerateConfig, checkpoints: list) -> None:
    """One error before any model loads when an option asks a checkpoint's adapter for what it cannot do."""
    for ckpt in checkpoints:
        trainable = ckpt.card.get("trainable", "lite")
        kind = "lora" if "lora" in ckpt.card else ADAPTER_OF.get(trainable, "fixed")
        asked = [(DUAL_PATH, f"--dual-path {config.dual_path}")] if config.dual_path < 1.0 else []
        for feature, option in asked:
            reason = refusal(kind, feature)
            if reason:
                raise OstafError(f"{option} with the {ckpt.token} checkpoint (--trainable {trainable}): {reason}")
        if config.lam_blocks and kind == "fixed":
            raise OstafError(
                f"--lam-blocks scales weight offsets per block; the {ckpt.token} checkpoint (--trainable "
                f"{trainable}) has none: drop --lam-blocks for it"
            )
        if config.blends_predictions:
            reason = prediction_blend_refusal(ckpt.token, trainable)
            if reason:
                raise OstafError(reason)
        what = TRAINABLE.get(trainable, TRAINABLE["lite"])
        if config.compose_switch and not switchable(what, config.token_lambda):
            advice = ("add --token-lambda, or " if what.adapter == "none" else "") + "drop --compose-switch"
            raise OstafError(
                f"--compose-switch turns each checkpoint off outside its steps; the {ckpt.token} checkpoint "
                f"(--trainable {trainable}) fine-tuned U-Net weights, which act in every step unless --token-lambda "
                f"blends them from the base model's (λ = 0: the base weights; only without weight offsets): {advice}"
            )
    if config.compose_switch:
        check_attributes([c.card.get("attribute", "") for c in checkpoints], config.compose_switch)


def composition_hint(checkpoints: list, prompt: str) -> str | None:
    """Advice when a shape checkpoint trained on captioned views is composed with a look written only after it.

    The views named their look before the class ('a red striped object in the shape of *m'), so the shape's tuned
    blocks read a look from there: with the other placeholder only in its own phrase the look comes out mixed with
    a colour of the shape checkpoint's (world v3, 16 named test pairs: look 0.42; written in both places 0.98)."""

    def phrase(ckpt) -> str:  # 'in the shape of *m', as training wrote it (the attribute's word, the card's token)
        return replace(ATTRIBUTES[ckpt.card.get("attribute", "appearance")], token=ckpt.token).phrase()

    for shape in checkpoints:
        with_views = shape.card.get("attribute") == "shape" and shape.card.get("train", {}).get("views")
        shape_phrase = phrase(shape)
        if not with_views or shape_phrase not in prompt:
            continue
        before = prompt[: prompt.index(shape_phrase)]
        late = [c for c in checkpoints if c is not shape and c.token in prompt and c.token not in before]
        if late:
            look = late[0]
            return (
                f"{prompt!r}: {shape.token}'s views named their look before the class ('a red striped object "
                f"{shape_phrase}'), and {look.token} comes only after it; write it there as well for the look to "
                f"come through, e.g. 'a {look.token} object {shape_phrase} {phrase(look)}'"
            )
    return None


def check_length(pipe: Pipeline, prompt: str, placeholders: list[str]) -> None:
    """Prompts past CLIP's 77 tokens are cut (with a warning); a cut that drops a placeholder (any of its vectors)
    is an error. Counted as the pipeline reads the prompt: a placeholder of N vectors is N tokens."""
    prompts = PromptEncoder(pipe)
    tokenizer = prompts.tokenizer
    ids = tokenizer(prompts.expand([prompt], tokenizer)[0]).input_ids
    limit = tokenizer.model_max_length
    if len(ids) <= limit:
        return
    kept = ids[: limit - 1]
    lost = [t for t in placeholders if t in prompt and not set(prompts.token_ids(t)) <= set(kept)]
    if lost:
        raise OstafError(
            f"prompt {prompt[:60]!r}… has {len(ids)} tokens; CLIP reads {limit}, and the cut drops {', '.join(lost)}: "
            "shorten the prompt or move the placeholder to the front"
        )
    warnings.warn(f"prompt {prompt[:60]!r}… has {len(ids)} tokens; CLIP reads the first {limit}", stacklevel=2)


def set_scheduler(pipe: Pipeline, name: str) -> None:
    if name not in SCHEDULER_CLASSES:
        raise OstafError(f"unknown scheduler {name!r}: use one of {', '.join(SCHEDULERS)}")
    pipe.scheduler = SCHEDULER_CLASSES[name].from_config(pipe.scheduler.config)


RANDOM_WEIGHTS_NOTICE = (
    "%s has random weights (a preset for testing the code path): its images are noise-like by design; use "
    "--model attribute-world for a small trained model, or real SD-1.x or SDXL weights"
)


def generate(config: GenerateConfig, pipe: Pipeline | None = None, progress: bool = True) -> list[PromptResult]:
    """Load the checkpoint(s) onto the base model and write every image, grid and an index.

    Without a checkpoint (only with --reference-attention) the base model generates with the reference alone:
    DreamTuner's training-free path, a baseline.
    """
    check_generate_inputs(config)
    checkpoints = [load_checkpoint(c) for c in config.ckpt]
    tokens = [c.token for c in checkpoints]
    check_adapters_can(config, checkpoints)
    if len(set(tokens)) != len(tokens):
        raise OstafError(f"two checkpoints learned the same token ({tokens}): compose different attributes")
    device = resolve_device(config.device)
    dtype = autocast_dtype(config.precision, device) or torch.float32
    if pipe is None:
        pipe = (
            load_base_pipeline(checkpoints[0], config.model, dtype=dtype)
            if checkpoints
            else load_pipeline(config.model or DEFAULT_MODEL, dtype=dtype)
        )
    base = base_of(pipe)
    if base is not None and is_preset(base.model):  # say so once: a user should not read meaning into noise
        log.warning(RANDOM_WEIGHTS_NOTICE, base.model)
    pipe.to(device)
    set_scheduler(pipe, config.scheduler)
    adapters = [
        apply(
            pipe,
            c,
            token_lambda=config.token_lambda,
            token_lambda_origin=config.token_lambda_origin,
            token_lambda_blend=config.token_lambda_blend,
        )
        for c in checkpoints
    ]
    if config.lam_blocks:
        blocks = parse_block_scales(config.lam_blocks)
        modulated = {b for a in adapters for b in a.blocks()}
        if set(blocks) - modulated:
            raise OstafError(
                f"--lam-blocks names {sorted(set(blocks) - modulated)}, but the checkpoints modulate only "
                f"{sorted(modulated)}: pick among those"
            )
        for adapter in adapters:
            adapter.set_block_scales({b: v for b, v in blocks.items() if b in adapter.blocks()})
    for prompt in config.prompt:
        check_length(pipe, prompt, tokens)
        hint = composition_hint(checkpoints, prompt)
        if hint:
            log.warning(hint)
    reference = config.reference_image or (checkpoints[0].card["train"]["image"] if checkpoints else "")
    attributes = [c.card.get("attribute", "") for c in checkpoints]
    options = GenerationOptions.from_config(config, pipe, tokens, adapters, reference, attributes)
    try:
        results = [
            sweep(
                pipe,
                adapters,
                prompt,
                config.lam,
                config.seeds,
                config.num_steps,
                config.guidance,
                config.resolution or None,
                config.batch_size,
                progress,
                options,
            )
            for prompt in config.prompt
        ]
    finally:
        options.close()
    write_sweep(config.out, results, config.to_dict())
    return results
