"""Exact evaluators for Attribute World images: no pretrained network, only the known rendering rules.

- `recover_mask`: the background colour is known, so the object is every pixel far from it.
- `shape_iou`: centroid-centred IoU (the paper's protocol, `ostaf.metrics.mask_iou`) of recovered masks.
- `classify_shape`: the canonical silhouette with the best IoU after centring and area matching.
- `dominant_colour` / `classify_colour`: the median non-white object colour, nearest palette entry.
- `texture_signature` / `classify_texture`: (white fraction, white/colour transitions along x, along y)
  inside the object, nearest to the signatures of the canonical textures.
- `appearance_distance`: colour distance / 255 + texture-signature distance (0 for identical looks).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ostaf.metrics import center_mask, mask_iou
from ostaf.world.generator import BACKGROUND, COLOURS, SECOND, SHAPES, SIZE, TEXTURES, silhouette, texture_pattern

BACKGROUND_TOLERANCE = 40.0  # RGB distance from the background above which a pixel is the object
WHITE_TOLERANCE = 40.0
MAX_OBJECT_FRACTION = 0.6  # the largest world object covers ~1/3 of the image: more is not an object


def _distance(image: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.linalg.norm(image.astype(np.float32) - np.asarray(colour, np.float32), axis=-1)


def recover_mask(image: np.ndarray) -> np.ndarray:
    """Boolean (H, W) object mask of a world image (generated or rendered)."""
    return _distance(image, BACKGROUND) > BACKGROUND_TOLERANCE


def shape_iou(image: np.ndarray, reference_mask: np.ndarray) -> float:
    return mask_iou(recover_mask(image), reference_mask, size=SIZE)


@lru_cache(maxsize=1)
def _canonical_areas() -> dict[str, float]:
    return {s: float(silhouette(s).sum()) for s in SHAPES}


def classify_shape(mask: np.ndarray) -> tuple[str, float]:
    """(best shape, its IoU) for a mask of any position and size; "none" for an empty or frame-filling mask."""
    if not mask.any() or mask.mean() > MAX_OBJECT_FRACTION:
        return "none", 0.0
    centred = center_mask(mask, SIZE)
    area = centred.sum()
    scores = {}
    for shape, canonical_area in _canonical_areas().items():
        scale = 0.32 * float(np.sqrt(area / canonical_area))
        scores[shape] = mask_iou(centred, silhouette(shape, SIZE, scale=scale), size=SIZE)
    best = max(scores, key=scores.get)
    return best, scores[best]


def _object_pixels(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pixels = image[mask]
    white = _distance(pixels, SECOND) < WHITE_TOLERANCE
    return pixels, white


def dominant_colour(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    pixels, white = _object_pixels(image, mask)
    body = pixels[~white] if (~white).any() else pixels
    return np.median(body.astype(np.float32), axis=0) if len(body) else np.zeros(3, np.float32)


def classify_colour(image: np.ndarray, mask: np.ndarray) -> str:
    colour = dominant_colour(image, mask)
    return min(COLOURS, key=lambda name: float(np.linalg.norm(colour - np.asarray(COLOURS[name]))))


def texture_signature(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(white fraction, x-transition rate, y-transition rate) of the texture inside the object."""
    white = (_distance(image, SECOND) < WHITE_TOLERANCE) & mask
    if not mask.any():
        return np.zeros(3)
    both_x = mask[:, 1:] & mask[:, :-1]
    both_y = mask[1:, :] & mask[:-1, :]
    tx = (white[:, 1:] != white[:, :-1])[both_x].mean() if both_x.any() else 0.0
    ty = (white[1:, :] != white[:-1, :])[both_y].mean() if both_y.any() else 0.0
    return np.array([white[mask].mean(), tx, ty], dtype=np.float64)


@lru_cache(maxsize=1)
def _texture_prototypes() -> dict[str, np.ndarray]:
    full = np.ones((SIZE, SIZE), bool)
    prototypes = {}
    for texture in TEXTURES:
        image = np.empty((SIZE, SIZE, 3), np.uint8)
        image[:] = COLOURS["red"]
        image[texture_pattern(texture)] = SECOND
        prototypes[texture] = texture_signature(image, full)
    return prototypes


def classify_texture(image: np.ndarray, mask: np.ndarray) -> str:
    signature = texture_signature(image, mask)
    return min(TEXTURES, key=lambda t: float(np.linalg.norm(signature - _texture_prototypes()[t])))


def appearance_distance(image_a: np.ndarray, image_b: np.ndarray) -> float:
    """How differently two world images look (colour and texture of their objects); 0 for the same look."""
    mask_a, mask_b = recover_mask(image_a), recover_mask(image_b)
    colour = float(np.linalg.norm(dominant_colour(image_a, mask_a) - dominant_colour(image_b, mask_b))) / 255.0
    texture = float(np.linalg.norm(texture_signature(image_a, mask_a) - texture_signature(image_b, mask_b)))
    return colour + texture
