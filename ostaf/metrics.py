"""The paper's metrics, one function each, with the exact definitions used for the table.

- CLIP-T: open_clip ViT-B/32 cosine(image, prompt without its placeholder phrase);
  CLIPScore = 2.5 · max(cos, 0).
- DINO: cosine of the CLS features (`last_hidden_state[:, 0]`) of DINO ViT-S/16, generated
  vs reference foreground, both resized to 224 and ImageNet-normalised.
- Gram distance: VGG-19 features at relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 of both images
  resized to 512 and ImageNet-normalised; G = F Fᵀ / (C·H·W); the mean over layers of the mean
  squared difference of the Gram matrices. Lower is more similar.
- Mask IoU (authors' protocol): masks resized to 512² (nearest), each translated so that its
  centroid is at the centre, then |A ∩ B| / |A ∪ B|.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG_LAYERS = {1: "relu1_1", 6: "relu2_1", 11: "relu3_1", 20: "relu4_1", 29: "relu5_1"}  # vgg19.features index
IOU_SIZE = 512
_PHRASE = re.compile(r"\s*,?\s*in the (shape|appearance|style) of \*[ams]\b")


def strip_placeholder(prompt: str) -> str:
    """ "a cat in the shape of *m, on a beach" → "a cat, on a beach"; stray tokens go too."""
    text = _PHRASE.sub("", prompt)
    text = re.sub(r"\*[ams]\b", "", text)
    text = re.sub(r"\s+", " ", text).strip(" ,")
    return re.sub(r"\s+,", ",", text)


def _pixels(images: Sequence[Image.Image], size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    arrays = [
        np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255.0
        for im in images
    ]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (B, 3, S, S)
    return (batch - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@lru_cache(maxsize=1)
def _clip_tokenizer():
    """open_clip's ViT-B/32 tokenizer (its bundled BPE); built once, it takes seconds."""
    import open_clip

    return open_clip.get_tokenizer("ViT-B-32")


@torch.no_grad()
def clip_t(clip_model, images: Sequence[Image.Image], prompt: str) -> dict[str, float]:
    """Mean CLIP-T and CLIPScore of `images` against `prompt` with the placeholder phrase removed."""
    import open_clip

    transform = open_clip.image_transform(clip_model.visual.image_size, is_train=False)
    image_features = clip_model.encode_image(torch.stack([transform(im.convert("RGB")) for im in images]))
    text = _clip_tokenizer()([strip_placeholder(prompt)])
    text_features = clip_model.encode_text(text)
    cos = F.cosine_similarity(image_features, text_features, dim=-1)  # (B,)
    return {"clip_t": float(cos.mean()), "clipscore": float((2.5 * cos.clamp(min=0)).mean())}


@torch.no_grad()
def dino_similarity(dino_model, images: Sequence[Image.Image], reference: Image.Image) -> float:
    """Mean cosine of DINO CLS features between each image and the reference."""
    size = dino_model.config.image_size
    cls = dino_model(pixel_values=_pixels([reference, *images], size)).last_hidden_state[:, 0]  # (1+B, D)
    return float(F.cosine_similarity(cls[1:], cls[:1], dim=-1).mean())


def gram_matrices(vgg_features: torch.nn.Module, image: Image.Image, size: int = 512) -> list[torch.Tensor]:
    grams, x = [], _pixels([image], size)
    last = max(VGG_LAYERS)
    for index, layer in enumerate(vgg_features):
        x = layer(x)
        if index in VGG_LAYERS:
            _, c, h, w = x.shape
            flat = x.reshape(c, h * w)
            grams.append(flat @ flat.T / (c * h * w))
        if index == last:
            break
    return grams


@torch.no_grad()
def gram_distance(
    vgg_features: torch.nn.Module,
    images: Sequence[Image.Image],
    reference: Image.Image,
    reference_grams: list[torch.Tensor] | None = None,
) -> float:
    """Mean over images of the layer-averaged MSE between Gram matrices (lower = closer style).

    `reference_grams` (from `gram_matrices`) saves recomputing the reference for every call.
    """
    ref = reference_grams if reference_grams is not None else gram_matrices(vgg_features, reference)
    per_image = [
        float(torch.stack([F.mse_loss(g, r) for g, r in zip(gram_matrices(vgg_features, im), ref, strict=True)]).mean())
        for im in images
    ]
    return float(np.mean(per_image))


def center_mask(mask: np.ndarray, size: int = IOU_SIZE) -> np.ndarray:
    """Resize a boolean mask to size² (nearest) and move its centroid to the centre."""
    resized = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST))
    resized = resized > 127
    if not resized.any():
        return resized
    ys, xs = np.nonzero(resized)
    dy, dx = round(size / 2 - ys.mean() - 0.5), round(size / 2 - xs.mean() - 0.5)
    out = np.zeros_like(resized)
    ys, xs = ys + dy, xs + dx
    keep = (ys >= 0) & (ys < size) & (xs >= 0) & (xs < size)
    out[ys[keep], xs[keep]] = True
    return out


def mask_iou(a: np.ndarray, b: np.ndarray, center: bool = True, size: int = IOU_SIZE) -> float:
    """IoU of two boolean masks under the authors' protocol (resize to size², centroid-centred)."""
    if center:
        a, b = center_mask(a, size), center_mask(b, size)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0
