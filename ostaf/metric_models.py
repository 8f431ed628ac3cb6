"""Local-only loaders for the metric networks (CLIP, DINO, VGG-19); `tiny` builds random stand-ins.

Each real model is looked for in an environment variable first, then in the
cache its library uses (Hugging Face hub cache, torch hub cache); nothing is
downloaded. `locate()` reports where each one was looked for, for `ostaf doctor`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ostaf.errors import OstafError
from ostaf.runtime import seeded

DINO_HUB_ID = "facebook/dino-vits16"
DINO_ENV = "OSTAF_DINO_WEIGHTS"
VGG_ENV = "OSTAF_VGG_WEIGHTS"
VGG_FILE = "vgg19-dcbb9e9d.pth"  # torchvision's IMAGENET1K_V1 file name


@dataclass
class Location:
    name: str
    looked: list[str]
    found: str | None
    fix: str


def locate_dino() -> Location:
    from huggingface_hub import try_to_load_from_cache

    env = os.environ.get(DINO_ENV)
    looked = [f"${DINO_ENV}={env or '(unset)'}", f"HF cache: {DINO_HUB_ID}"]
    found = env if env and Path(env, "config.json").is_file() else None
    if found is None:
        cached = try_to_load_from_cache(DINO_HUB_ID, "config.json")
        found = str(Path(cached).parent) if isinstance(cached, str) else None
    return Location(
        "DINO ViT-S/16 (DINO metric)",
        looked,
        found,
        f"set {DINO_ENV} to a folder with the HF files of {DINO_HUB_ID} (config.json + weights)",
    )


def locate_vgg() -> Location:
    env = os.environ.get(VGG_ENV)
    hub = Path(torch.hub.get_dir()) / "checkpoints" / VGG_FILE
    looked = [f"${VGG_ENV}={env or '(unset)'}", str(hub)]
    found = next((str(p) for p in (Path(env) if env else None, hub) if p is not None and p.is_file()), None)
    return Location(
        "VGG-19 ImageNet (Gram metric)", looked, found, f"put torchvision's {VGG_FILE} at {hub}, or set {VGG_ENV} to it"
    )


def load_dino(spec: str = "auto"):
    from transformers import ViTConfig, ViTModel

    if spec == "tiny":
        with seeded(0):
            config = ViTConfig(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                image_size=32,
                patch_size=8,
            )
            return ViTModel(config, add_pooling_layer=False).eval()
    location = locate_dino()
    if location.found is None:
        raise OstafError(f"{location.name} weights not found: {location.fix}")
    return ViTModel.from_pretrained(location.found, local_files_only=True, add_pooling_layer=False).eval()


def load_vgg_features(spec: str = "auto") -> torch.nn.Module:
    from torchvision.models import vgg19

    model = vgg19()
    if spec != "tiny":
        location = locate_vgg()
        if location.found is None:
            raise OstafError(f"{location.name} weights not found: {location.fix}")
        model.load_state_dict(torch.load(location.found, map_location="cpu", weights_only=True))
    return model.features.eval().requires_grad_(False)
