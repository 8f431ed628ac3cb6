"""Exact evaluators for Attribute World images: no pretrained network, only the known rendering rules.

- `recover_mask`: the background colour is known, so the object is every pixel far from it.
- `shape_iou`: centroid-centred IoU (the paper's protocol, `ostaf.metrics.mask_iou`) of recovered masks.
- `classify_shape`: the canonical silhouette with the best IoU after centring and area matching.
- `dominant_colour` / `classify_colour`: the median non-white object colour, nearest palette entry.
- `texture_signature` / `classify_texture`: (white fraction, white/colour transitions along x, along y)
  inside the object, nearest to the signatures of the canonical textures.
- `appearance_distance`: colour distance / 255 + texture-signature distance (0 for identical looks).
- `style_features` / `classify_style`: (the rim's magenta fraction, the drop shadow's area cast down
  and right of the object, the frame's share of the image edge), each 0 for a flat rendered object and
  ≥ 2 for its own style after scaling (1 is where a style starts to show); `style_distance` compares
  two images'.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ostaf.metrics import center_mask, mask_iou
from ostaf.world.generator import (
    BACKGROUND,
    COLOURS,
    FRAME,
    OUTLINE,
    OUTLINE_WIDTH,
    SECOND,
    SHADOW,
    SHADOW_OFFSET,
    SHAPES,
    SIZE,
    STYLES,
    TEXTURES,
    erode,
    frame_interior,
    silhouette,
    texture_pattern,
)

BACKGROUND_TOLERANCE = 40.0  # RGB distance from the background above which a pixel is the object
WHITE_TOLERANCE = 40.0
OUTLINE_TOLERANCE = 60.0  # magenta is far from everything else
MAX_OBJECT_FRACTION = 0.6  # the largest world object covers ~1/3 of the image: more is not an object
# a style shows when its feature reaches these (rendered images: exactly 0 for the others, ≥ 2× these for it;
# generated flat objects stay below a quarter of them)
OUTLINE_SHOWS = 0.2  # of the rim band (the world model draws rims thinner than the rendered 2 px)
SHADOW_SHOWS = 0.03  # of the object's area, beyond 2 px of the object
FRAME_SHOWS = 0.4  # of the image's outer band


def _distance(image: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.linalg.norm(image.astype(np.float32) - np.asarray(colour, np.float32), axis=-1)


def _segment_position(image: np.ndarray, a: tuple, b: tuple) -> np.ndarray:
    """Per pixel, where on the colour segment a–b its nearest point lies (0 at a, 1 at b)."""
    pixels = image.astype(np.float32)
    a_, b_ = np.asarray(a, np.float32), np.asarray(b, np.float32)
    span = float((b_ - a_) @ (b_ - a_))
    return np.clip(((pixels - a_) @ (b_ - a_)) / span, 0.0, 1.0) if span else np.zeros(pixels.shape[:-1], np.float32)


def _segment_distance(image: np.ndarray, a: tuple, b: tuple) -> np.ndarray:
    """Per-pixel RGB distance to the colour segment a–b (the blends of two colours)."""
    a_, b_ = np.asarray(a, np.float32), np.asarray(b, np.float32)
    t = _segment_position(image, a, b)
    return np.linalg.norm(image.astype(np.float32) - (a_ + t[..., None] * (b_ - a_)), axis=-1)


def is_shadow(image: np.ndarray) -> np.ndarray:
    """Pixels of the drop shadow or of its blend with the background."""
    return (_segment_distance(image, SHADOW, BACKGROUND) < BACKGROUND_TOLERANCE) & (
        _distance(image, BACKGROUND) > BACKGROUND_TOLERANCE
    )


def recover_mask(image: np.ndarray) -> np.ndarray:
    """Boolean (H, W) object mask of a world image (generated or rendered): not background, not shadow,
    inside the frame's band."""
    return (_distance(image, BACKGROUND) > BACKGROUND_TOLERANCE) & ~is_shadow(image) & frame_interior(len(image))


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
    """The object's pixels and which of them are not its body colour (white texture, magenta rim)."""
    pixels = image[mask]
    other = (_distance(pixels, SECOND) < WHITE_TOLERANCE) | (_distance(pixels, OUTLINE) < OUTLINE_TOLERANCE)
    return pixels, other


def interior(mask: np.ndarray) -> np.ndarray:
    """The object without its rim band (where the outlined style paints), if anything is left."""
    inner = erode(mask, OUTLINE_WIDTH)
    return inner if inner.any() else mask


def dominant_colour(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    pixels, white = _object_pixels(image, mask)
    body = pixels[~white] if (~white).any() else pixels
    return np.median(body.astype(np.float32), axis=0) if len(body) else np.zeros(3, np.float32)


def classify_colour(image: np.ndarray, mask: np.ndarray) -> str:
    colour = dominant_colour(image, mask)
    return min(COLOURS, key=lambda name: float(np.linalg.norm(colour - np.asarray(COLOURS[name]))))


def texture_signature(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(white fraction, x-transition rate, y-transition rate) of the texture inside the object's interior.

    A pixel is "white" when it lies on the blend from the body colour to white, nearer white: a
    generated image blurs small dots into pale blobs that a fixed distance to white would miss."""
    if not mask.any():
        return np.zeros(3)
    body = tuple(float(c) for c in dominant_colour(image, mask))
    mask = interior(mask)
    white = (_segment_position(image, body, SECOND) > 0.5) & (_segment_distance(image, body, SECOND) < WHITE_TOLERANCE)
    white &= mask
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


def shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`mask` moved by (dy, dx) pixels, False where it moved in from outside."""
    moved = np.zeros_like(mask)
    h, w = mask.shape
    moved[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return moved


def _cast_shadow(dark: np.ndarray, mask: np.ndarray) -> int:
    """Dark pixels where the object, moved down and right, lands, less those where it lands moved up and
    left: a drop shadow counts, a dark fringe all round (a soft-edged black object) cancels out."""
    k = SHADOW_OFFSET
    return int((dark & shift(mask, k, k)).sum()) - int((dark & shift(mask, -k, -k)).sum())


def style_features(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(rim, shadow, frame) of the image, each scaled so that 1 is where its style starts to show.

    rim: the share of the object's outer `OUTLINE_WIDTH` px that is magenta; shadow: shadow pixels cast down
    and right of the object (`_cast_shadow`), per object pixel; frame: the share of the image's outer
    `FRAME_WIDTH` px that is the frame's slate blue.
    """
    mask = recover_mask(image) if mask is None else mask
    if not mask.any():
        return np.zeros(3)
    band = mask & ~erode(mask, OUTLINE_WIDTH)
    if not band.any():
        return np.zeros(3)
    rim = float((_distance(image, OUTLINE) < OUTLINE_TOLERANCE)[band].mean())
    shadow = float(_cast_shadow(is_shadow(image) & ~mask, mask)) / mask.sum()
    edge = ~frame_interior(len(image))
    framed = float((_distance(image, FRAME) < OUTLINE_TOLERANCE)[edge].mean())
    return np.array([rim / OUTLINE_SHOWS, shadow / SHADOW_SHOWS, framed / FRAME_SHOWS])


def classify_style(image: np.ndarray, mask: np.ndarray | None = None) -> str:
    """The style whose feature shows most (flat when none reaches 1)."""
    features = style_features(image, mask)
    best = int(np.argmax(features))
    return STYLES[1 + best] if features[best] >= 1.0 else "flat"


def style_distance(image_a: np.ndarray, image_b: np.ndarray) -> float:
    """How differently two world images are drawn (0 for the same style); features capped at 2."""
    a, b = (np.minimum(style_features(i), 2.0) for i in (image_a, image_b))
    return float(np.linalg.norm(a - b)) / 2.0
