"""CLIP ViT-B/32 image features of the reference, the image half of the placeholder-token init.

open_clip is the library the authors used (``ViT-B-32``, ``laion2B-s34B-b79K``).
Real weights come from a local file or folder (``OSTAF_CLIP_WEIGHTS``) or from the
offline Hugging Face cache; presets build the same `open_clip.CLIP` class with
seeded random weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image

from ostaf.errors import OstafError
from ostaf.model_spec import is_preset
from ostaf.presets import PRESETS
from ostaf.runtime import seeded

CLIP_ARCH = "ViT-B-32"
CLIP_HUB_ID = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
CLIP_WEIGHTS_ENV = "OSTAF_CLIP_WEIGHTS"
EMBEDDING_FILE = "image_embedding.safetensors"  # written beside a preprocessed reference


class ImageEncoder:
    """Maps a PIL image to its L2-normalised CLIP image embedding."""

    def __init__(self, model: torch.nn.Module) -> None:
        import open_clip

        self.model = model.eval().requires_grad_(False)
        self.transform = open_clip.image_transform(model.visual.image_size, is_train=False)

    @property
    def dim(self) -> int:
        return self.model.visual.output_dim

    @torch.no_grad()
    def embed(self, image: Image.Image) -> torch.Tensor:
        pixels = self.transform(image.convert("RGB")).unsqueeze(0)  # (1, 3, S, S)
        features = self.model.encode_image(pixels)[0]  # (D,)
        return features / features.norm()


def load_image_encoder(model: str, seed: int = 0) -> ImageEncoder:
    """The CLIP image encoder that belongs with `model` (a preset name or real SD weights)."""
    import open_clip

    if is_preset(model):
        kwargs = PRESETS[model].clip_vision or open_clip.get_model_config(CLIP_ARCH)
        with seeded(seed):
            return ImageEncoder(open_clip.CLIP(**kwargs))
    return ImageEncoder(_pretrained_clip())


def cached_hub_weights() -> Path | None:
    """The cached weight file of the authors' CLIP, looked up without any network access."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(CLIP_HUB_ID, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _pretrained_clip() -> torch.nn.Module:
    import open_clip

    local = os.environ.get(CLIP_WEIGHTS_ENV)
    try:
        if local:
            path = Path(local).expanduser()
            if path.is_dir():
                return open_clip.create_model(f"local-dir:{path}")
            if path.is_file():
                return open_clip.create_model(CLIP_ARCH, pretrained=str(path))
            raise FileNotFoundError(path)
        cached = cached_hub_weights()
        if cached is None:
            raise FileNotFoundError(f"{CLIP_HUB_ID} is not in the Hugging Face cache")
        return open_clip.create_model(CLIP_ARCH, pretrained=str(cached))
    except Exception as err:  # open_clip raises several types for "not there"
        raise OstafError(
            f"CLIP {CLIP_ARCH} image weights not found ({err.__class__.__name__}: {err}). Nothing is downloaded: set "
            f"{CLIP_WEIGHTS_ENV} to an open_clip checkpoint file or folder ({CLIP_ARCH}, laion2B-s34B-b79K), or put "
            f"the hub snapshot {CLIP_HUB_ID} into the Hugging Face cache; or train with --token-init word"
        ) from None


def save_image_embedding(folder: str | Path, embedding: torch.Tensor) -> Path:
    """Store the reference's CLIP embedding in its preprocessed folder (the token-init step)."""
    from safetensors.torch import save_file

    from ostaf.io import atomic_write

    return atomic_write(
        Path(folder) / EMBEDDING_FILE,
        lambda tmp: save_file({"image_embedding": embedding.float().contiguous()}, str(tmp)),
    )


def saved_image_embedding(folder: str | Path) -> torch.Tensor | None:
    from safetensors.torch import load_file

    path = Path(folder) / EMBEDDING_FILE
    return load_file(str(path))["image_embedding"] if path.is_file() else None
