"""λ-sweep generation: prompts × seeds × λ → images and one labelled grid per prompt.

Several λ share one denoising batch (per-sample λ); a batch whose samples all
have the same λ runs with the offsets merged into the weights, at the cost of
the base model.
"""

from __future__ import annotations

import warnings
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
)
from PIL import Image

from ostaf.attributes import check_prompt
from ostaf.checkpoint import apply, load_base_pipeline, load_checkpoint
from ostaf.config import GenerateConfig
from ostaf.errors import OstafError
from ostaf.images import make_grid
from ostaf.models import native_resolution
from ostaf.offsets import OffsetsAdapter
from ostaf.runtime import autocast_dtype, progress_bar, resolve_device
from ostaf.sweep import PromptResult, write_sweep

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,
    "dpm": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
}


@dataclass(frozen=True)
class Sample:
    prompt: str
    lam: float
    seed: int


def sweep(
    pipe: StableDiffusionPipeline,
    adapters: list[OffsetsAdapter],
    prompt: str,
    lams: list[float],
    seeds: list[int],
    num_steps: int = 50,
    guidance: float = 7.5,
    resolution: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> PromptResult:
    """Images of one prompt for every (λ, seed), in batches of up to `batch_size` samples."""
    samples = [Sample(prompt, lam, seed) for seed in seeds for lam in lams]
    images: dict[tuple[float, int], Image.Image] = {}
    batches = [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]
    for batch in progress_bar(batches, disable=not progress, desc=prompt[:40], unit="batch"):
        for sample, image in zip(batch, run_batch(pipe, adapters, batch, num_steps, guidance, resolution), strict=True):
            images[(sample.lam, sample.seed)] = image
    rows = [[images[(lam, seed)] for lam in lams] for seed in seeds]
    grid = make_grid(rows, [f"lam={lam:g}" for lam in lams], [f"seed {s}" for s in seeds])
    return PromptResult(prompt, images, grid)


def run_batch(
    pipe: StableDiffusionPipeline,
    adapters: list[OffsetsAdapter],
    batch: list[Sample],
    num_steps: int,
    guidance: float,
    resolution: int | None,
) -> list[Image.Image]:
    """One denoising batch; each sample gets its own seed's noise and its own λ."""
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
    if len(lams) == 1:  # one λ: fold it into the weights
        lam = lams.pop()
        merged = [a for a in adapters if not a.merged]
        for adapter in merged:
            adapter.merge(lam)
        try:
            return pipe(**kwargs).images
        finally:
            for adapter in merged:
                adapter.unmerge()
    per_sample = torch.tensor([s.lam for s in batch], dtype=torch.float32)
    with ExitStack() as stack:
        for adapter in adapters:
            adapter.set_scale(per_sample)
            stack.callback(adapter.set_scale, 1.0)
            stack.enter_context(adapter.caching())  # W ⊙ ΔW once per sweep, not once per step
        return pipe(**kwargs).images


def check_length(tokenizer, prompt: str, placeholders: list[str]) -> None:
    """Prompts past CLIP's 77 tokens are cut (with a warning); a cut that drops a placeholder is an error."""
    ids = tokenizer(prompt).input_ids
    limit = tokenizer.model_max_length
    if len(ids) <= limit:
        return
    kept = ids[: limit - 1]
    lost = [t for t in placeholders if t in prompt and tokenizer.convert_tokens_to_ids(t) not in kept]
    if lost:
        raise OstafError(
            f"prompt {prompt[:60]!r}… has {len(ids)} tokens; CLIP reads {limit}, and the cut drops {', '.join(lost)}: "
            "shorten the prompt or move the placeholder to the front"
        )
    warnings.warn(f"prompt {prompt[:60]!r}… has {len(ids)} tokens; CLIP reads the first {limit}", stacklevel=2)


def set_scheduler(pipe: StableDiffusionPipeline, name: str) -> None:
    if name not in SCHEDULERS:
        raise OstafError(f"unknown scheduler {name!r}: use one of {', '.join(SCHEDULERS)}")
    pipe.scheduler = SCHEDULERS[name].from_config(pipe.scheduler.config)


def generate(
    config: GenerateConfig, pipe: StableDiffusionPipeline | None = None, progress: bool = True
) -> list[PromptResult]:
    """Load the checkpoint(s) onto the base model and write every image, grid and an index."""
    checkpoints = [load_checkpoint(c) for c in config.ckpt]
    tokens = [c.token for c in checkpoints]
    if len(set(tokens)) != len(tokens):
        raise OstafError(f"two checkpoints learned the same token ({tokens}): compose different attributes")
    for prompt in config.prompt:
        check_prompt(prompt, tokens)
    device = resolve_device(config.device)
    dtype = autocast_dtype(config.precision, device) or torch.float32
    pipe = pipe or load_base_pipeline(checkpoints[0], config.model, dtype=dtype)
    pipe.to(device)
    set_scheduler(pipe, config.scheduler)
    adapters = [apply(pipe, c) for c in checkpoints]
    for prompt in config.prompt:
        check_length(pipe.tokenizer, prompt, tokens)

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
        )
        for prompt in config.prompt
    ]
    write_sweep(config.out, results, config.to_dict())
    return results
