"""Write a diffusers SD-1.x pipeline as one original-layout (LDM) state dict, for single-file tests.

diffusers (0.42) converts LDM → diffusers only; it has no writer. This is the reverse key map,
derived from the forward rules in `diffusers.loaders.single_file_utils`; the tests prove it by loading
the file through diffusers' own `from_single_file` and comparing every tensor.
"""

from __future__ import annotations

import re

import torch
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

RESNET = (  # diffusers name → LDM name inside a U-Net resnet
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
VAE_ATTENTION = (
    ("group_norm", "norm"),
    ("to_q", "q"),
    ("to_k", "k"),
    ("to_v", "v"),
    ("to_out.0", "proj_out"),
)


def _renamed(rest: str, pairs: tuple[tuple[str, str], ...]) -> str:
    head, _, tail = rest.rpartition(".")
    for new, old in pairs:
        if head == new:
            return f"{old}.{tail}"
    return rest


def unet_to_ldm(state: dict[str, torch.Tensor], layers_per_block: int, cross_attn_up: list[bool]) -> dict:
    fixed = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    per_level = layers_per_block + 1
    out = {}
    for key, value in state.items():
        if key in fixed:
            out[fixed[key]] = value
            continue
        if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            b, j, rest = int(m[1]), int(m[2]), m[3]
            name = f"input_blocks.{1 + b * per_level + j}.0.{_renamed(rest, RESNET)}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            name = f"input_blocks.{1 + int(m[1]) * per_level + int(m[2])}.1.{m[3]}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            name = f"input_blocks.{(int(m[1]) + 1) * per_level}.0.op.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            name = f"middle_block.{2 * int(m[1])}.{_renamed(m[2], RESNET)}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            name = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            name = f"output_blocks.{int(m[1]) * per_level + int(m[2])}.0.{_renamed(m[3], RESNET)}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            name = f"output_blocks.{int(m[1]) * per_level + int(m[2])}.1.{m[3]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            b = int(m[1])
            name = f"output_blocks.{b * per_level + layers_per_block}.{2 if cross_attn_up[b] else 1}.conv.{m[2]}"
        else:
            raise KeyError(f"no LDM name for U-Net key {key}")
        out[name] = value
    return {f"model.diffusion_model.{key}": value for key, value in out.items()}


def vae_to_ldm(state: dict[str, torch.Tensor], num_up_blocks: int) -> dict:
    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    out = {}
    for key, value in state.items():
        if key in fixed:
            out[fixed[key]] = value
            continue
        if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
            name = f"{m[1]}.mid.attn_1.{_renamed(m[2], VAE_ATTENTION)}"
            value = value[:, :, None, None] if value.dim() == 2 else value  # LDM's attention is a 1×1 conv
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            name = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            name = f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            name = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            level = num_up_blocks - 1 - int(m[1])
            name = f"decoder.up.{level}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            name = f"decoder.up.{num_up_blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"
        else:
            raise KeyError(f"no LDM name for VAE key {key}")
        out[name] = value
    return {f"first_stage_model.{key}": value for key, value in out.items()}


def text_encoder_to_ldm(state: dict[str, torch.Tensor]) -> dict:
    return {
        f"cond_stage_model.transformer.{key if key.startswith('text_model.') else 'text_model.' + key}": value
        for key, value in state.items()
    }


def pipeline_to_ldm(pipe) -> dict[str, torch.Tensor]:
    """The pipeline's U-Net, VAE and text encoder under the original single-file key names."""
    unet = pipe.unet.config
    cross_attn_up = [kind.startswith("CrossAttn") for kind in unet.up_block_types]
    state = {
        **unet_to_ldm(pipe.unet.state_dict(), unet.layers_per_block, cross_attn_up),
        **vae_to_ldm(pipe.vae.state_dict(), len(pipe.vae.config.up_block_types)),
        **text_encoder_to_ldm(pipe.text_encoder.state_dict()),
    }
    return {key: value.contiguous() for key, value in state.items()}
