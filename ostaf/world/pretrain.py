"""Pretrain a small text-to-image latent diffusion model on Attribute World, deterministically.

The recipe (`WorldRecipe`) is data: model configs, steps, batch sizes, learning rates, seeds.
Two stages, both on images drawn by `ostaf.world.sample` from held-in combinations only:

1. the VAE (`AutoencoderKL`, 64 px → 16×16×4 latents): MSE reconstruction + a small KL term;
2. the U-Net and the CLIP text encoder (random init, the offline CLIP tokenizer) on the
   captions, with the VAE frozen: the SD noise-prediction loss, 10 % empty captions (for CFG).

Everything is seeded from the recipe, so the same recipe gives the same losses; the recipe's
hash is stored beside the weights. Weights are saved in fp16 safetensors (the test asset cap).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch.nn import functional as F
from transformers import CLIPTextConfig, CLIPTextModel

from ostaf.models import CLIP_TOKEN_IDS
from ostaf.runtime import progress_bar, seeded
from ostaf.tokenizer import clip_tokenizer
from ostaf.world.generator import sample


@dataclass(frozen=True)
class WorldRecipe:
    unet: dict[str, Any] = field(
        default_factory=lambda: dict(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(48, 96, 96),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=64,
            attention_head_dim=8,
            norm_num_groups=16,
        )
    )
    vae: dict[str, Any] = field(
        default_factory=lambda: dict(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            sample_size=64,
            layers_per_block=1,
            block_out_channels=(32, 64, 64),
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            norm_num_groups=16,
        )
    )
    text_encoder: dict[str, Any] = field(
        default_factory=lambda: dict(
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            num_hidden_layers=2,
            projection_dim=64,
            **CLIP_TOKEN_IDS,
        )
    )
    seed: int = 0
    vae_steps: int = 1500
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_kl: float = 1e-6
    diffusion_steps: int = 12000
    diffusion_batch: int = 32
    diffusion_lr: float = 4e-4
    caption_dropout: float = 0.1

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def world_batch(start_seed: int, size: int) -> tuple[torch.Tensor, list[str]]:
    """(B, 3, 64, 64) in [-1, 1] and captions of the held-in images seeded start_seed … start_seed+size-1."""
    worlds = [sample(start_seed + i, held_out=False) for i in range(size)]
    pixels = torch.from_numpy(np.stack([w.image for w in worlds])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return pixels, [w.caption for w in worlds]


def build_models(recipe: WorldRecipe) -> tuple[AutoencoderKL, UNet2DConditionModel, CLIPTextModel]:
    with seeded(recipe.seed):
        vae = AutoencoderKL(**recipe.vae)
        unet = UNet2DConditionModel(**recipe.unet)
        text_encoder = CLIPTextModel(CLIPTextConfig(**recipe.text_encoder))
    return vae, unet, text_encoder


def train_vae(vae: AutoencoderKL, recipe: WorldRecipe, progress: bool = True) -> list[float]:
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr)
    generator = torch.Generator().manual_seed(recipe.seed)
    losses = []
    for step in progress_bar(range(recipe.vae_steps), disable=not progress, desc="world VAE"):
        pixels, _ = world_batch(1_000_000 + step * recipe.vae_batch, recipe.vae_batch)
        posterior = vae.encode(pixels).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        loss = F.mse_loss(vae.decode(latents).sample, pixels) + recipe.vae_kl * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def train_diffusion(
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    recipe: WorldRecipe,
    progress: bool = True,
) -> list[float]:
    tokenizer = clip_tokenizer()
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
    )
    vae.requires_grad_(False).eval()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=recipe.diffusion_lr)
    generator = torch.Generator().manual_seed(recipe.seed + 1)
    rng = np.random.default_rng(recipe.seed + 1)
    losses = []
    for step in progress_bar(range(recipe.diffusion_steps), disable=not progress, desc="world diffusion"):
        pixels, captions = world_batch(step * recipe.diffusion_batch, recipe.diffusion_batch)
        captions = ["" if rng.random() < recipe.caption_dropout else c for c in captions]
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, 1000, (latents.shape[0],), generator=generator)
        ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        pred = unet(scheduler.add_noise(latents, noise, t), t, text_encoder(ids)[0]).sample
        loss = F.mse_loss(pred, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(loss.item())
    return losses


def pretrain(recipe: WorldRecipe, out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Run both stages and save a diffusers pipeline folder (fp16 safetensors) plus `recipe.json`."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from ostaf.models import SD_SCHEDULER

    torch.manual_seed(recipe.seed)
    started = time.perf_counter()
    vae, unet, text_encoder = build_models(recipe)
    vae_losses = train_vae(vae, recipe, progress)
    diffusion_losses = train_diffusion(vae, unet, text_encoder, recipe, progress)
    pipe = StableDiffusionPipeline(
        vae=vae,
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        scheduler=PNDMScheduler.from_config(SD_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out = Path(out)
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)
    info = {
        "recipe": asdict(recipe),
        "recipe_hash": recipe.hash(),
        "seconds": round(time.perf_counter() - started, 1),
        "vae_losses_head": vae_losses[:5],
        "diffusion_losses_head": diffusion_losses[:5],
        "vae_loss_final": float(np.mean(vae_losses[-50:])),
        "diffusion_loss_final": float(np.mean(diffusion_losses[-200:])),
    }
    (out / "recipe.json").write_text(json.dumps(info, indent=2, default=list) + "\n")
    return info
