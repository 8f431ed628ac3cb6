"""The model presets and where a model name points, without torch: `--help`, checks and light steps read them.

A preset supplies configs (and, for `attribute-world`, a folder of trained weights shipped with the
package); `ostaf.models` builds the modules from them. A preset is of one architecture: ``sd1`` (one CLIP text
encoder, `StableDiffusionPipeline`) or ``sdxl`` (two text encoders, the second with a projection whose pooled
output and the size/crop micro-conditioning enter the U-Net's added embedding; `StableDiffusionXLPipeline`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
SDXL_SCHEDULER = dict(  # stabilityai/stable-diffusion-xl-base-1.0's scheduler (EulerDiscreteScheduler)
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    steps_offset=1,
    timestep_spacing="leading",
    interpolation_type="linear",
    prediction_type="epsilon",
)


@dataclass(frozen=True)
class Preset:
    """Configs of a random-weight model; `resolution` is its native image size."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    resolution: int
    clip_vision: dict[str, Any] = field(default_factory=dict)  # open_clip CLIP kwargs; {} means ViT-B-32
    text_encoder_2: dict[str, Any] = field(default_factory=dict)  # SDXL's second encoder (with projection)


CLIP_TOKEN_IDS = dict(
    vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407
)

# the pieces several presets share (SDXL's first text encoder is SD-1.x's CLIP-L; its VAE is SD's, rescaled)
TINY_VAE = dict(
    block_out_channels=(32, 64),
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    sample_size=64,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    norm_num_groups=32,
)
TINY_TEXT = dict(
    hidden_size=32,
    intermediate_size=37,
    num_attention_heads=4,
    num_hidden_layers=2,
    projection_dim=32,
    **CLIP_TOKEN_IDS,
)
TINY_CLIP_VISION = dict(
    embed_dim=32,
    vision_cfg=dict(image_size=32, layers=2, width=32, head_width=16, patch_size=8),
    text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
)
SD_VAE = dict(  # CompVis/stable-diffusion-v1-4's VAE
    block_out_channels=(128, 256, 512, 512),
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    sample_size=512,
    layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32,
)
CLIP_L_TEXT = dict(  # CLIP ViT-L/14's text tower
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    projection_dim=768,
    hidden_act="quick_gelu",
    **CLIP_TOKEN_IDS,
)
FULL_UNET = dict(act_fn="silu", downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=1)
SDXL_UNET = dict(  # what makes a U-Net SDXL's: linear projections, the added time/text embedding
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    use_linear_projection=True,
    addition_embed_type="text_time",
    in_channels=4,
    out_channels=4,
    norm_num_groups=32,
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
        vae=TINY_VAE,
        text_encoder=TINY_TEXT,
        resolution=64,
        clip_vision=TINY_CLIP_VISION,
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
            **FULL_UNET,
        ),
        vae=SD_VAE,
        text_encoder=CLIP_L_TEXT,
        resolution=512,
    ),
    # SDXL's layout in miniature: attention in down_blocks.1-2, the mid block and up_blocks.0-1 (two attention
    # modules each, so B-LoRA's up_blocks.0.attentions.0 / .1 split exists), two text encoders of different
    # widths (32 + 48 = the U-Net's 80-wide context), the second's 32-wide projection pooled into the added
    # embedding with 6 size/crop values × 8 (32 + 48 = 80 = projection_class_embeddings_input_dim)
    "tiny-sdxl": Preset(
        unet=dict(
            SDXL_UNET,
            sample_size=32,
            layers_per_block=1,
            block_out_channels=(32, 64, 64),
            transformer_layers_per_block=(1, 1, 2),
            attention_head_dim=(2, 4, 4),
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=80,
            cross_attention_dim=80,
        ),
        vae=dict(TINY_VAE, force_upcast=True),
        text_encoder=TINY_TEXT,
        text_encoder_2=dict(TINY_TEXT, hidden_size=48),
        resolution=64,
        clip_vision=TINY_CLIP_VISION,
    ),
    "sdxl-random": Preset(  # values of stabilityai/stable-diffusion-xl-base-1.0's config files
        unet=dict(
            SDXL_UNET,
            sample_size=128,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
            cross_attention_dim=2048,
            **FULL_UNET,
        ),
        vae=dict(SD_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True),
        text_encoder=CLIP_L_TEXT,
        text_encoder_2=dict(  # OpenCLIP ViT-bigG/14's text tower, with its projection
            CLIP_L_TEXT,
            hidden_size=1280,
            intermediate_size=5120,
            num_attention_heads=20,
            num_hidden_layers=32,
            projection_dim=1280,
            hidden_act="gelu",
        ),
        resolution=1024,
    ),
}


# Presets with trained weights shipped as package data, loaded like any diffusers folder.
WORLD_MODEL_ENV = "OSTAF_WORLD_MODEL"
WORLD_MODEL_DIR = Path(__file__).resolve().parent / "world" / "model"


def world_model_path() -> Path:
    """The Attribute World model: `$OSTAF_WORLD_MODEL`, else the copy installed with the package."""
    return Path(os.environ.get(WORLD_MODEL_ENV) or WORLD_MODEL_DIR)


TRAINED_PRESETS: dict[str, Callable[[], Path]] = {"attribute-world": world_model_path}
