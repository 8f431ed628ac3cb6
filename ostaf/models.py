"""Load Stable Diffusion 1.x or SDXL: a real checkpoint (local folder or offline HF cache) or a random preset.

Every model goes through the same classes (`UNet2DConditionModel`, `AutoencoderKL`,
`CLIPTextModel` (+ `CLIPTextModelWithProjection` for SDXL), `StableDiffusionPipeline` or
`StableDiffusionXLPipeline`); a preset only supplies configs and seeded random weights instead of files:

- ``tiny`` / ``tiny-sdxl``: few-MB models for tests and the demo (seconds on a CPU), SD-1.x- and SDXL-shaped;
- ``sd14-random`` / ``sdxl-random``: the full SD-1.4 (859 M-parameter U-Net) and SDXL-base (2.6 B) architectures
  for benchmarks, where cost does not depend on weight values;
- ``attribute-world``: a small model *trained* on the procedural Attribute World
  (`ostaf.world.pretrain`), shipped inside the package (`ostaf/world/model/`): real, if small, images.

An SD-1.x single file (`.safetensors`) loads through diffusers' `from_single_file` with the
project's own copy of the configs (`ostaf.single_file`). Nothing is ever downloaded: hub ids
resolve only from the local Hugging Face cache.
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from ostaf.errors import OstafError
from ostaf.model_spec import check_model_location, is_preset, resolve_model
from ostaf.presets import PRESETS, SD_SCHEDULER, SDXL_SCHEDULER, Preset
from ostaf.runtime import seeded
from ostaf.tokenizer import SDXL_PAD_TOKEN, clip_tokenizer

Pipeline = StableDiffusionPipeline | StableDiffusionXLPipeline
PIPELINE_CLASSES = {
    "StableDiffusionPipeline": StableDiffusionPipeline,
    "StableDiffusionXLPipeline": StableDiffusionXLPipeline,
}


@dataclass(frozen=True)
class BaseModel:
    """How a base pipeline was made: the model name and the seed of a random preset's weights."""

    model: str
    seed: int = 0


_BASES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pipeline → BaseModel, for checkpoint cards


def base_of(pipe: Pipeline) -> BaseModel | None:
    """How `load_pipeline` made `pipe` (None for a pipeline built elsewhere)."""
    return _BASES.get(pipe)


def native_resolution(pipe: Pipeline) -> int:
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def architecture(pipe: Pipeline) -> str:
    """``sdxl`` (two text encoders, added time/text conditioning) or ``sd1``: what a checkpoint card records."""
    return "sdxl" if isinstance(pipe, StableDiffusionXLPipeline) else "sd1"


@torch.no_grad()
def vae_encode(vae: AutoencoderKL, pixels: torch.Tensor):
    """The VAE posterior of `pixels`, in fp32 where the VAE says it overflows in fp16 (`force_upcast`: SDXL's),
    as diffusers' SDXL pipelines decode; the VAE is left in the dtype it had."""
    dtype = vae.dtype
    upcast = dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if upcast:
        vae.to(torch.float32)
    try:
        return vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    finally:
        if upcast:
            vae.to(dtype)


def load_pipeline(model: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> Pipeline:
    """A Stable Diffusion (1.x or XL) pipeline for a preset name, a local diffusers folder, a single file, or a
    cached hub id."""
    if is_preset(model):
        pipe = _random_pipeline(PRESETS[model], seed)
        pipe = pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
    else:
        pipe = _pretrained_pipeline(resolve_model(model), dtype)
    _BASES[pipe] = BaseModel(model, seed)
    return pipe


def _random_pipeline(preset: Preset, seed: int) -> Pipeline:
    with seeded(seed):
        unet = UNet2DConditionModel(**preset.unet)
        vae = AutoencoderKL(**preset.vae)
        text_encoder = CLIPTextModel(CLIPTextConfig(**preset.text_encoder))
        text_encoder_2 = (
            CLIPTextModelWithProjection(CLIPTextConfig(**preset.text_encoder_2)) if preset.text_encoder_2 else None
        )
    common = dict(vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet)
    if text_encoder_2 is None:
        scheduler = PNDMScheduler.from_config(SD_SCHEDULER)
        pipe = StableDiffusionPipeline(
            **common, scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    else:
        pipe = StableDiffusionXLPipeline(
            **common,
            text_encoder_2=text_encoder_2,
            tokenizer_2=clip_tokenizer(pad_token=SDXL_PAD_TOKEN),
            scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER),
            add_watermarker=False,
        )
    for module in (unet, vae, text_encoder, text_encoder_2):  # as from_pretrained gives them: inference mode
        if module is not None:
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


def pipeline_class(source: str) -> type[Pipeline]:
    """SD-1.x or SDXL, from the folder's (or the cached hub snapshot's) model_index.json; SD-1.x if unreadable."""
    index = Path(source).expanduser() / "model_index.json"
    if not index.is_file():
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(source, "model_index.json")
        except ValueError:  # not a hub id either: the loader's own error says what to pass
            cached = None
        index = Path(cached) if isinstance(cached, str) else index
    try:
        name = json.loads(index.read_text()).get("_class_name", "")
    except (OSError, ValueError):
        return StableDiffusionPipeline
    if name.startswith("StableDiffusionXL") and name != "StableDiffusionXLPipeline":
        raise OstafError(f"{source} is a {name} (not a text-to-image base model): use the SDXL base model's folder")
    return PIPELINE_CLASSES.get(name, StableDiffusionPipeline)


def _pretrained_pipeline(model: str, dtype: torch.dtype) -> Pipeline:
    check_model_location(model)
    path = Path(model).expanduser()
    if path.is_file():
        from ostaf.single_file import load_single_file

        return load_single_file(path, dtype)
    source = str(path) if path.exists() else model
    cls = pipeline_class(source)
    extra = _offline_tokenizers(path, cls)
    if cls is StableDiffusionPipeline:
        extra |= {"safety_checker": None, "requires_safety_checker": False}
    else:
        extra |= {"add_watermarker": False}
    try:
        with quiet_diffusers():
            pipe = cls.from_pretrained(source, dtype=dtype, local_files_only=True, **extra)
    except (OSError, ValueError) as err:
        hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface")
        raise OstafError(
            f"cannot load Stable Diffusion weights {model!r}: {err.__class__.__name__}. Nothing is downloaded. "
            f"Either pass --model /path/to/folder (a diffusers SD-1.x or SDXL folder with model_index.json), or put "
            f"the hub snapshot of {model!r} into the Hugging Face cache ({hf_home}/hub); or use --model tiny"
        ) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _offline_tokenizers(path: Path, cls: type[Pipeline]) -> dict:
    """The tokenizers a local folder lacks, built from open_clip's BPE (a hub snapshot always has its own)."""
    if not path.exists():
        return {}
    wanted = {"tokenizer": clip_tokenizer}
    if cls is StableDiffusionXLPipeline:
        wanted["tokenizer_2"] = lambda: clip_tokenizer(pad_token=SDXL_PAD_TOKEN)
    return {name: make() for name, make in wanted.items() if not (path / name).is_dir()}
