"""Load Stable Diffusion 1.x: a real checkpoint (local folder or offline HF cache) or a random preset.

Every model goes through the same classes (`UNet2DConditionModel`, `AutoencoderKL`,
`CLIPTextModel`, `StableDiffusionPipeline`); a preset only supplies configs and
seeded random weights instead of files:

- ``tiny``: a few-MB model for tests and the demo (runs in seconds on a CPU);
- ``sd14-random``: the full SD-1.4 architecture (859 M-parameter U-Net) for benchmarks,
  where cost does not depend on weight values;
- ``attribute-world``: a small model *trained* on the procedural Attribute World
  (`ostaf.world.pretrain`), shipped inside the package (`ostaf/world/model/`): real, if small, images.

An SD-1.x single file (`.safetensors`) loads through diffusers' `from_single_file` with the
project's own copy of the configs (`ostaf.single_file`). Nothing is ever downloaded: hub ids
resolve only from the local Hugging Face cache.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPTextConfig, CLIPTextModel

from ostaf.errors import OstafError
from ostaf.preflight import check_model_location
from ostaf.presets import PRESETS, SD_SCHEDULER, Preset, is_preset, resolve_model
from ostaf.runtime import seeded
from ostaf.tokenizer import clip_tokenizer


@dataclass(frozen=True)
class BaseModel:
    """How a base pipeline was made: the model name and the seed of a random preset's weights."""

    model: str
    seed: int = 0


_BASES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pipeline → BaseModel, for checkpoint cards


def base_of(pipe: StableDiffusionPipeline) -> BaseModel | None:
    """How `load_pipeline` made `pipe` (None for a pipeline built elsewhere)."""
    return _BASES.get(pipe)


def native_resolution(pipe: StableDiffusionPipeline) -> int:
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def load_pipeline(model: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> StableDiffusionPipeline:
    """A `StableDiffusionPipeline` for a preset name, a local diffusers folder, a single file, or a cached hub id."""
    if is_preset(model):
        pipe = _random_pipeline(PRESETS[model], seed)
        pipe = pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
    else:
        pipe = _pretrained_pipeline(resolve_model(model), dtype)
    _BASES[pipe] = BaseModel(model, seed)
    return pipe


def _random_pipeline(preset: Preset, seed: int) -> StableDiffusionPipeline:
    with seeded(seed):
        unet = UNet2DConditionModel(**preset.unet)
        vae = AutoencoderKL(**preset.vae)
        text_encoder = CLIPTextModel(CLIPTextConfig(**preset.text_encoder))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=PNDMScheduler.from_config(SD_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    for module in (unet, vae, text_encoder):  # as from_pretrained gives them: inference mode
        module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextmanager
def quiet_diffusers() -> Iterator[None]:
    """No per-component progress bars or dtype notes from diffusers and transformers: a load is one step of ours."""
    from transformers.utils import logging as transformers_logging

    libraries = (diffusers_logging, transformers_logging)
    saved = [(lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in libraries]
    for lib in libraries:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, (verbosity, bar) in zip(libraries, saved, strict=True):
            lib.set_verbosity(verbosity)
            if bar:
                lib.enable_progress_bar()


def _pretrained_pipeline(model: str, dtype: torch.dtype) -> StableDiffusionPipeline:
    check_model_location(model)
    path = Path(model).expanduser()
    if path.is_file():
        from ostaf.single_file import load_single_file

        return load_single_file(path, dtype)
    source = str(path) if path.exists() else model
    extra = {} if not path.exists() or (path / "tokenizer").is_dir() else {"tokenizer": clip_tokenizer()}
    try:
        with quiet_diffusers():
            pipe = StableDiffusionPipeline.from_pretrained(
                source,
                dtype=dtype,
                safety_checker=None,
                requires_safety_checker=False,
                local_files_only=True,
                **extra,
            )
    except (OSError, ValueError) as err:
        hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface")
        raise OstafError(
            f"cannot load Stable Diffusion weights {model!r}: {err.__class__.__name__}. Nothing is downloaded. "
            f"Either pass --model /path/to/folder (a diffusers SD-1.x folder with model_index.json), or put the "
            f"hub snapshot of {model!r} into the Hugging Face cache ({hf_home}/hub); or use --model tiny"
        ) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe
