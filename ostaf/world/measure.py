"""Continuous evaluators for world v3: how close an image's attribute is to a reference's, for any value.

Named values have classifiers (`ostaf.world.evaluate`); unnamed ones have no class to hit, so each
attribute gets a similarity from the rendering rules and a `match` threshold calibrated on the
generator (`CALIBRATION`, `tests/test_world_measure.py`: two renders of one value under different
jitter match ≥ 95 % of the time, two values of the family ≤ 5 %).

    shape       `shape_similarity`: IoU of the two silhouettes after moving each centroid to the
                centre and scaling each to the same area (position and size are jitter, not shape)
    appearance  `look_of`: the object's interior split into its two colours (2-means in CIELAB), the
                second colour's layout as a correlation function over ±`LAGS` px (period, angle and duty,
                independent of where the object is and what outline it has); `appearance_gap` = ΔE of
                the main colours, ΔE of the second colours and the correlation functions' distance
    style       `style_of`: the rim (colour, width), the drop shadow (offset, darkness) and the frame
                (colour, width) recovered from the pixels; `style_gap` compares them part by part
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ostaf.world.evaluate import shift
from ostaf.world.generator import BACKGROUND, SIZE, erode

LAGS = 8  # the texture's correlation function covers lags of ±LAGS px
GRID = 64  # shapes are compared on a GRID² canvas at a fixed area
CANON_AREA = 0.16  # of that canvas


# ---------------------------------------------------------------- colour


def lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (…, 3) in 0–255 → CIELAB (D65)."""
    c = np.asarray(rgb, np.float64) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = c @ np.array([[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192], [0.1805, 0.0722, 0.9505]])
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def delta_e(a: np.ndarray, b: np.ndarray) -> float:
    """CIE76 ΔE between two sRGB colours."""
    return float(np.linalg.norm(lab(a) - lab(b)))


# ---------------------------------------------------------------- shape


def canonical_silhouette(mask: np.ndarray, grid: int = GRID) -> np.ndarray:
    """`mask` resampled so its centroid is the canvas centre and its area `CANON_AREA` of the canvas."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return np.zeros((grid, grid), bool)
    cy, cx = ys.mean() + 0.5, xs.mean() + 0.5
    scale = np.sqrt(len(ys) / (CANON_AREA * grid * grid))  # source px per canvas px
    v, u = (np.mgrid[:grid, :grid] + 0.5 - grid / 2) * scale
    sy, sx = np.floor(cy + v).astype(int), np.floor(cx + u).astype(int)
    inside = (sy >= 0) & (sy < mask.shape[0]) & (sx >= 0) & (sx < mask.shape[1])
    out = np.zeros((grid, grid), bool)
    out[inside] = mask[sy[inside], sx[inside]]
    return out


def shape_similarity(mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    """IoU of two silhouettes, each centred and scaled to the same area (1 for the same shape)."""
    a, b = canonical_silhouette(mask_a), canonical_silhouette(mask_b)
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


# ---------------------------------------------------------------- appearance


@dataclass(frozen=True)
class Look:
    colour: np.ndarray  # RGB of the main colour
    second: np.ndarray | None  # RGB of the second colour; None for a solid look
    correlation: np.ndarray | None  # (2·LAGS+1)² correlation function of the second colour's layout


def _two_means(points: np.ndarray, iterations: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Labels (0 main, 1 second) and the two centres of `points` (N, 3) in CIELAB."""
    first = points[np.argmax(np.linalg.norm(points - np.median(points, 0), axis=1))]
    centres = np.stack([np.median(points, 0), first])
    for _ in range(iterations):
        labels = np.argmin(np.linalg.norm(points[:, None] - centres[None], axis=2), axis=1)
        centres = np.stack([points[labels == k].mean(0) if (labels == k).any() else centres[k] for k in (0, 1)])
    if (labels == 1).sum() > (labels == 0).sum():
        labels, centres = 1 - labels, centres[::-1]
    return labels, centres


def _correlation(indicator: np.ndarray, support: np.ndarray) -> np.ndarray:
    """The normalised correlation of `indicator` with itself shifted, over pairs of pixels both in
    `support`, for lags of ±LAGS px."""
    h, w = indicator.shape
    x = np.where(support, indicator.astype(np.float64), 0.0)
    mean = x[support].mean()
    centred = np.where(support, x - mean, 0.0)
    shape = (2 * h, 2 * w)

    def auto(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.real(np.fft.ifft2(np.fft.fft2(a, shape) * np.conj(np.fft.fft2(b, shape))))

    pairs = auto(support.astype(np.float64), support.astype(np.float64))
    cov = auto(centred, centred) / np.maximum(pairs, 1.0)
    rows = np.r_[np.arange(-LAGS, LAGS + 1)] % shape[0]
    cols = np.r_[np.arange(-LAGS, LAGS + 1)] % shape[1]
    window = cov[np.ix_(rows, cols)]
    variance = cov[0, 0]
    return window / variance if variance > 1e-9 else np.zeros_like(window)


SOLID_SHARE = 0.06  # a second colour covering less than this of the interior is noise: the look is solid
SOLID_DELTA_E = 18.0  # two colour clusters closer than this are one colour


def look_of(image: np.ndarray, mask: np.ndarray) -> Look | None:
    """The look of the object under `mask` (None when there is no object to look at)."""
    inner = erode(mask, 1)
    inner = inner if inner.sum() >= 30 else mask
    if inner.sum() < 10:
        return None
    pixels = image[inner].astype(np.float64)
    labels, centres = _two_means(lab(pixels))
    main = np.median(pixels[labels == 0], axis=0)
    share = float((labels == 1).mean())
    if share < SOLID_SHARE or np.linalg.norm(centres[0] - centres[1]) < SOLID_DELTA_E:
        return Look(main, None, None)
    second = np.median(pixels[labels == 1], axis=0)
    indicator = np.zeros(mask.shape, bool)
    indicator[inner] = labels == 1
    return Look(main, second, _correlation(indicator, inner))


@dataclass(frozen=True)
class AppearanceGap:
    colour: float  # ΔE of the main colours
    second: float  # ΔE of the second colours (0 when both are solid, 100 when one is)
    texture: float  # RMS difference of the correlation functions (0 both solid, 1 one solid)

    def total(self) -> float:
        """One number: the colour differences in ΔE/100 plus the texture distance."""
        return self.colour / 100 + self.second / 100 + self.texture


def appearance_gap(a: Look | None, b: Look | None) -> AppearanceGap:
    """The two colours are compared as a pair (which one covers more is arbitrary near half-and-half);
    the correlation function of a layout equals its complement's, so swapping needs nothing there."""
    if a is None or b is None:
        return AppearanceGap(100.0, 100.0, 1.0)
    if a.second is None or b.second is None:
        same = a.second is None and b.second is None
        return AppearanceGap(delta_e(a.colour, b.colour), 0.0 if same else 100.0, 0.0 if same else 1.0)
    kept = (delta_e(a.colour, b.colour), delta_e(a.second, b.second))
    swapped = (delta_e(a.colour, b.second), delta_e(a.second, b.colour))
    colour, second = min(kept, swapped, key=sum)
    texture = float(np.sqrt(np.mean((a.correlation - b.correlation) ** 2)))
    return AppearanceGap(colour, second, texture)


# ---------------------------------------------------------------- style


@dataclass(frozen=True)
class Style:
    rim: tuple[np.ndarray, int] | None  # colour, width (px at 64)
    shadow: tuple[np.ndarray, float] | None  # offset (dx, dy) in px at 64, darkness
    frame: tuple[np.ndarray, int] | None  # colour, width (px at 64)


RIM_DELTA_E = 25.0  # an outer ring this far from every body colour is a rim
FRAME_DELTA_E = 25.0  # an edge ring this far from the background is a frame
MAX_RIM, MAX_FRAME, MAX_SHADOW = 4, 5, 8  # px searched


def _shadow_pixels(image: np.ndarray) -> np.ndarray:
    """Pixels on the line from 0.3 × the background to the background, darker than it: cast shadows."""
    bg = np.asarray(BACKGROUND, np.float64)
    direction = bg / np.linalg.norm(bg)
    pixels = image.astype(np.float64)
    t = pixels @ direction
    residual = np.linalg.norm(pixels - t[..., None] * direction, axis=-1)
    return (residual < 25) & (t >= 0.28 * np.linalg.norm(bg)) & (t <= 0.8 * np.linalg.norm(bg))


def _band(
    image: np.ndarray, region: np.ndarray, far_from: list[np.ndarray], threshold: float, rings: int
) -> tuple[np.ndarray, int]:
    """(colour, width) of a band along the inside of `region`'s edge: the outermost 1-px rings mostly
    (> half) of one colour far from every colour in `far_from`; width 0 when the outer ring is not."""
    references = lab(np.stack(far_from))
    current, colour, width = region, None, 0
    for _ in range(rings):
        inner = erode(current, 1)
        ring = current & ~inner
        current = inner
        if ring.sum() < 8:
            break
        pixels = image[ring].astype(np.float64)
        colours = lab(pixels)
        far = np.linalg.norm(colours[:, None] - references[None], axis=2).min(axis=1) >= threshold
        if colour is not None:
            far &= np.linalg.norm(colours - lab(colour), axis=1) < threshold
        if far.mean() <= 0.5:
            break
        colour = np.median(pixels[far], axis=0) if colour is None else colour
        width += 1
    return (colour, width) if colour is not None else (np.zeros(3), 0)


def _rim(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, int]:
    """(colour, width in px) of the band along the inside of the object's edge unlike its body; width 0: none."""
    if mask.sum() < 30:
        return np.zeros(3), 0
    body = look_of(image, erode(mask, MAX_RIM))
    if body is None:
        return np.zeros(3), 0
    colours = [body.colour] + ([body.second] if body.second is not None else [])
    return _band(image, mask, colours, RIM_DELTA_E, MAX_RIM)


def rim_width(image: np.ndarray, mask: np.ndarray) -> int:
    """The px width of the rim a style draws along the object's edge (0: none), as `style_of` finds it."""
    return _rim(image, mask)[1]


def body_of(mask: np.ndarray, rim: int) -> np.ndarray:
    """The object's mask without a rim `rim` px wide (`mask` itself for none, or when too little is left): where
    the body's colour and texture are read — an unnamed rim is the style's, not the prompt's colour."""
    body = erode(mask, rim) if rim > 0 else mask
    return body if body.sum() >= 30 else mask


def style_of(image: np.ndarray, mask: np.ndarray) -> Style:
    """The style parts drawn around the object under `mask` (`recover_mask`'s), at 64 px."""
    scale = len(image) / SIZE
    bg = np.asarray(BACKGROUND, np.float64)
    # frame: rings along the image's edge
    edge = np.ones(mask.shape, bool)
    frame_colour, frame_width = _band(image, edge, [bg], FRAME_DELTA_E, MAX_FRAME)
    # rim: rings along the object's edge, unlike the body inside
    rim, shadow = None, None
    if mask.sum() >= 30:
        rim_colour, rim_width = _rim(image, mask)
        rim = (rim_colour, round(rim_width / scale)) if rim_width else None
        # shadow: the offset that best explains the shadow pixels as the silhouette moved
        cast = _shadow_pixels(image) & ~mask
        if cast.sum() >= 0.02 * mask.sum():
            best, best_dxy = -1.0, (0, 0)
            for dy in range(-MAX_SHADOW, MAX_SHADOW + 1):
                for dx in range(-MAX_SHADOW, MAX_SHADOW + 1):
                    moved = shift(mask, dy, dx) & ~mask
                    if moved.any():
                        iou = (moved & cast).sum() / (moved | cast).sum()
                        if iou > best:
                            best, best_dxy = iou, (dx, dy)
            if best >= 0.3:
                darkness = float(np.median(image[cast].astype(np.float64) @ bg) / (bg @ bg))
                shadow = (np.asarray(best_dxy, np.float64) / scale, darkness)
    frame = (frame_colour, round(frame_width / scale)) if frame_width else None
    return Style(rim, shadow, frame)


@dataclass(frozen=True)
class StyleGap:
    parts: float  # parts present in one and not the other (rim, shadow, frame): 0–3
    rim: float  # ΔE/100 + width difference / 3, where both have a rim
    shadow: float  # offset difference / 6 px + darkness difference, where both cast one
    frame: float  # ΔE/100 + width difference / 3, where both have a frame

    def total(self) -> float:
        return self.parts + self.rim + self.shadow + self.frame


def style_gap(a: Style, b: Style) -> StyleGap:
    parts = sum((x is None) != (y is None) for x, y in ((a.rim, b.rim), (a.shadow, b.shadow), (a.frame, b.frame)))

    def band(x, y) -> float:
        return 0.0 if x is None or y is None else delta_e(x[0], y[0]) / 100 + abs(x[1] - y[1]) / 3

    shadow = 0.0
    if a.shadow is not None and b.shadow is not None:
        shadow = float(np.linalg.norm(a.shadow[0] - b.shadow[0])) / 6 + abs(a.shadow[1] - b.shadow[1])
    return StyleGap(float(parts), band(a.rim, b.rim), shadow, band(a.frame, b.frame))


# ---------------------------------------------------------------- match thresholds (calibrated on the generator)

# tests/test_world_measure.py draws pairs of renders: the same value under other jitter (and, for
# appearance and style, on other shapes and looks) and two values of the family; each threshold sits
# in the gap between the two distributions (README, "Unnamed values")
SHAPE_MATCH = 0.85  # shape_similarity ≥ this: the same silhouette
APPEARANCE_MATCH = 0.35  # AppearanceGap.total() ≤ this: the same look
STYLE_MATCH = 0.5  # StyleGap.total() ≤ this: the same style
