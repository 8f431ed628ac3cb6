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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from ostaf.errors import OstafError
from ostaf.runtime import seeded
from ostaf.tokenizer import clip_tokenizer

SD_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    skip_prk_steps=True,
)


@dataclass(frozen=True)
class Preset:
    """Configs of a random-weight model; `resolution` is its native image size."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    resolution: int
    clip_vision: dict[str, Any] = field(default_factory=dict)  # open_clip CLIP kwargs; {} means ViT-B-32


CLIP_TOKEN_IDS = dict(
    vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407
)

PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        unet=dict(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D",) * 2,
            up_block_types=("CrossAttnUpBlock2D",) * 2,
            cross_attention_dim=32,
            attention_head_dim=4,
            norm_num_groups=32,
        ),
        vae=dict(
            block_out_channels=(32, 64),
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            sample_size=64,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            norm_num_groups=32,
        ),
        text_encoder=dict(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            projection_dim=32,
            **CLIP_TOKEN_IDS,
        ),
        resolution=64,
        clip_vision=dict(
            embed_dim=32,
            vision_cfg=dict(image_size=32, layers=2, width=32, head_width=16, patch_size=8),
            text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
        ),
    ),
    "sd14-random": Preset(  # values of CompVis/stable-diffusion-v1-4's config files
        unet=dict(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
            norm_num_groups=32,
            act_fn="silu",
            downsample_padding=1,
            flip_sin_to_cos=True,
            freq_shift=0,
            mid_block_scale_factor=1,
        ),
        vae=dict(
            block_out_channels=(128, 256, 512, 512),
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            sample_size=512,
            layers_per_block=2,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            norm_num_groups=32,
        ),
        text_encoder=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            projection_dim=768,
            hidden_act="quick_gelu",
            **CLIP_TOKEN_IDS,
        ),
        resolution=512,
    ),
}


# Presets with trained weights shipped as package data, loaded like any diffusers folder.
WORLD_MODEL_ENV = "OSTAF_WORLD_MODEL"
WORLD_MODEL_DIR = Path(__file__).resolve().parent / "world" / "model"


def world_model_path() -> Path:
    """The Attribute World model: `$OSTAF_WORLD_MODEL`, else the copy installed with the package."""
    return Path(os.environ.get(WORLD_MODEL_ENV) or WORLD_MODEL_DIR)


TRAINED_PRESETS: dict[str, Callable[[], Path]] = {"attribute-world": world_model_path}


@dataclass(frozen=True)
class BaseModel:
    """How a base pipeline was made: the model name and the seed of a random preset's weights."""

    model: str
    seed: int = 0


_BASES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pipeline → BaseModel, for checkpoint cards


def base_of(pipe: StableDiffusionPipeline) -> BaseModel | None:
    """How `load_pipeline` made `pipe` (None for a pipeline built elsewhere)."""
    return _BASES.get(pipe)


def is_preset(model: str) -> bool:
    """A random-weight preset (`tiny`, `sd14-random`); trained presets load through `load_pipeline` too."""
    return model in PRESETS


def is_any_preset(model: str) -> bool:
    """A preset of either kind: random weights, or trained weights shipped with the package."""
    return model in PRESETS or model in TRAINED_PRESETS


def resolve_model(model: str) -> str:
    """The folder behind a trained preset's name, or `model` unchanged."""
    if model not in TRAINED_PRESETS:
        return model
    path = TRAINED_PRESETS[model]()
    if not (path / "model_index.json").is_file():
        raise OstafError(
            f"the {model} model is not at {path}: it ships inside the ostaf package (reinstall it), or rebuild it "
            f"with `python -m ostaf.world.pretrain --out {path}` (about 30 min on 2 cores), or point "
            f"${WORLD_MODEL_ENV} at a copy"
        )
    return str(path)


def model_resolution(model: str) -> int:
    """The native image size of `model` without loading weights (presets, local folders; else SD's 512)."""
    import json

    if model in PRESETS:
        return PRESETS[model].resolution
    folder = Path(resolve_model(model)).expanduser()
    if folder.is_file():
        from ostaf.single_file import is_single_file, single_file_resolution

        return single_file_resolution(folder) if is_single_file(model) else 512
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
    except (OSError, ValueError):
        return 512
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


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


WEIGHT_FILES = (".safetensors", ".ckpt", ".bin", ".pt", ".pth")


def _pretrained_pipeline(model: str, dtype: torch.dtype) -> StableDiffusionPipeline:
    path = Path(model).expanduser()
    if not path.exists() and (path.suffix in WEIGHT_FILES or model.startswith(("/", "./", "../", "~"))):
        raise OstafError(
            f"{model} does not exist. Nothing is downloaded: --model takes a diffusers SD-1.x folder (with "
            "model_index.json), an SD-1.x single file (.safetensors), a preset (attribute-world, tiny, sd14-random) "
            "or a hub id already in the Hugging Face cache"
        )
    if path.is_file():
        from ostaf.single_file import SINGLE_FILE_SUFFIXES, is_single_file, load_single_file

        if not is_single_file(model):
            raise OstafError(
                f"{path} is a file but not a single-file checkpoint ({', '.join(SINGLE_FILE_SUFFIXES)}): pass an "
                "SD-1.x .safetensors file or a diffusers folder (with model_index.json)"
            )
        return load_single_file(path, dtype)
    source = str(path) if path.exists() else model
    if path.exists() and not (path / "model_index.json").is_file():
        raise OstafError(
            f"{path} is not a diffusers Stable Diffusion folder (no model_index.json): point --model at the folder "
            "that holds model_index.json, unet/, vae/, text_encoder/, scheduler/ (tokenizer/ optional)"
        )
    extra = {} if not path.exists() or (path / "tokenizer").is_dir() else {"tokenizer": clip_tokenizer()}
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            source,
            torch_dtype=dtype,
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
