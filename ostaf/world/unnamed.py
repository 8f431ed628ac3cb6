"""Unnamed attribute values: procedural families that no finite word list covers (world v3).

Each value is a string `"<attribute>#<id>"` (`shape#17`, `look#204`, `style#1000003`); its parameters
are a pure function of the id (`numpy.random.default_rng((FAMILY_SEED[attribute], id))`), so a value
travels as text through factors, manifests and MLflow like a named one.

    shape       star-shaped blobs (a few Fourier harmonics), random star polygons, superellipses
                (exponent, aspect, rotation), unions of two or three ellipses
    appearance  any RGB colour (kept apart from the background, its shadows and white) with a texture of
                continuous parameters: solid, stripes (angle, period, duty), dots (spacing, radius,
                lattice angle), checks (cell, angle), zigzags (period, amplitude, angle); the second
                colour is white or another colour
    style       one or two of: a rim (colour, width), a drop shadow (direction, offset, darkness),
                a frame (colour, width)

Ids below `SEEN_POOL` are the *seen* part of each family: pretraining draws them, captioned without
the value's word ("a red striped object", "a star", "a blue dotted ring, stylized"). Ids from
`NOVEL_BASE` on are *novel*: pretraining never draws them. References take seen values from the pool
(validation the even ids, test the odd ones) and novel values from disjoint id ranges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SEEN_POOL = 1024  # seen values per attribute: ids 0 … SEEN_POOL-1
# seen shapes whose polygon was redrawn after the v3 model's pretraining had started (their first draw left
# the origin outside and filled the image): the model saw the old silhouette, so no reference uses them
REDRAWN_SHAPES = (5, 162, 288, 308, 469, 592, 721, 795)
NOVEL_BASE = 1_000_000  # novel ids start here (validation 1_000_000…, test 2_000_000…)
PREFIX = {"shape": "shape#", "appearance": "look#", "style": "style#"}
FAMILY_SEED = {"shape": 7001, "appearance": 7002, "style": 7003}
UNNAMED_STYLE_WORD = "stylized"  # the caption's marker of an unnamed style (no word names which)

# colours the renderer relies on telling apart (kept in sync with generator.BACKGROUND / SECOND / OUTLINE)
_BACKGROUND = np.array((222, 208, 176), np.float32)
_WHITE = np.array((250, 250, 250), np.float32)
SHADOW_DARKNESS = (0.35, 0.6)  # shadow colour = background × darkness: on the black–background line


def unnamed(attribute: str, value_id: int) -> str:
    return f"{PREFIX[attribute]}{int(value_id)}"


def is_unnamed(value: str) -> bool:
    return "#" in value


def value_id(value: str) -> int:
    return int(value.rsplit("#", 1)[1])


def is_novel(value: str) -> bool:
    return is_unnamed(value) and value_id(value) >= SEEN_POOL


def _rng(attribute: str, vid: int) -> np.random.Generator:
    return np.random.default_rng((FAMILY_SEED[attribute], vid))


# ---------------------------------------------------------------- colours


def _shadow_line_distance(rgb: np.ndarray) -> float:
    """Distance to the segment of possible shadow colours (background × [0.3, 1])."""
    direction = _BACKGROUND / np.linalg.norm(_BACKGROUND)
    t = float(np.clip(rgb @ direction, 0.3 * np.linalg.norm(_BACKGROUND), np.linalg.norm(_BACKGROUND)))
    return float(np.linalg.norm(rgb - t * direction))


def usable_colour(rgb: np.ndarray, avoid: tuple[np.ndarray, ...] = ()) -> bool:
    """Far from the background, from white, from every shadow colour, and from `avoid` (RGB distance)."""
    return (
        np.linalg.norm(rgb - _BACKGROUND) > 90
        and np.linalg.norm(rgb - _WHITE) > 80
        and _shadow_line_distance(rgb) > 60
        and all(np.linalg.norm(rgb - a) > 90 for a in avoid)
    )


def draw_colour(rng: np.random.Generator, avoid: tuple[np.ndarray, ...] = ()) -> tuple[int, int, int]:
    while True:
        rgb = rng.integers(0, 256, 3).astype(np.float32)
        if usable_colour(rgb, avoid):
            return tuple(int(c) for c in rgb)


# ---------------------------------------------------------------- shapes


@dataclass(frozen=True)
class ShapeParams:
    kind: str  # blob | polygon | superellipse | ellipses
    values: tuple[float, ...]


@lru_cache(maxsize=4096)
def shape_params(vid: int) -> ShapeParams:
    rng = _rng("shape", vid)
    kind = ("blob", "polygon", "superellipse", "ellipses")[int(rng.integers(4))]
    if kind == "blob":  # r(θ) = 1 + Σ a_k cos(kθ + φ_k), k = 2…5
        amps = rng.uniform(0.0, 1.0, 4) * np.array([0.35, 0.25, 0.18, 0.12])
        phases = rng.uniform(0, 2 * np.pi, 4)
        return ShapeParams(kind, tuple(np.concatenate([amps, phases]).tolist()))
    if kind == "polygon":  # 3–8 vertices at jittered angles, radii 0.45–1, around the origin
        while True:  # every gap between neighbouring vertices under π, or the origin falls outside
            n = int(rng.integers(3, 9))
            angles = (np.arange(n) + rng.uniform(-0.35, 0.35, n)) * 2 * np.pi / n + rng.uniform(0, 2 * np.pi)
            radii = rng.uniform(0.45, 1.0, n)
            order = np.argsort(angles % (2 * np.pi))
            angles, radii = (angles % (2 * np.pi))[order], radii[order]
            if np.diff(angles, append=angles[0] + 2 * np.pi).max() < np.pi:
                return ShapeParams(kind, tuple(np.concatenate([angles, radii]).tolist()))
    if kind == "superellipse":  # |x/a|^p + |y/b|^p ≤ 1, rotated
        return ShapeParams(
            kind, (float(rng.uniform(0.6, 4.0)), float(rng.uniform(0.45, 1.0)), float(rng.uniform(0, np.pi)))
        )
    count = int(rng.integers(2, 4))  # unions of ellipses: centre, radii, angle each
    parts = []
    for _ in range(count):
        parts += [*rng.uniform(-0.45, 0.45, 2), *rng.uniform(0.25, 0.6, 2), rng.uniform(0, np.pi)]
    return ShapeParams(kind, tuple(float(v) for v in parts))


def _rotate(x: np.ndarray, y: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(angle), math.sin(angle)
    return c * x + s * y, -s * x + c * y


def _polygon_inside(x: np.ndarray, y: np.ndarray, angles: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Inside a star-shaped polygon (vertices by angle around the origin)."""
    theta = np.arctan2(y, x) % (2 * np.pi)
    n = len(angles)
    i = (np.searchsorted(angles, theta) - 1) % n
    j = (i + 1) % n
    ax, ay = radii[i] * np.cos(angles[i]), radii[i] * np.sin(angles[i])
    bx, by = radii[j] * np.cos(angles[j]), radii[j] * np.sin(angles[j])
    # the pixel and the origin lie on the same side of the edge a–b
    side = (bx - ax) * (y - ay) - (by - ay) * (x - ax)
    origin = (bx - ax) * (0 - ay) - (by - ay) * (0 - ax)
    return side * origin >= 0


def unnamed_shape_inside(vid: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The silhouette of shape `vid` in unit coordinates (it fits in the unit disc)."""
    p = shape_params(vid)
    v = np.asarray(p.values)
    if p.kind == "blob":
        amps, phases = v[:4], v[4:]
        theta = np.arctan2(y, x)
        radius = 1 + sum(a * np.cos((k + 2) * theta + ph) for k, (a, ph) in enumerate(zip(amps, phases, strict=True)))
        return np.hypot(x, y) <= radius / (1 + amps.sum())
    if p.kind == "polygon":
        n = len(v) // 2
        return _polygon_inside(x, y, v[:n], v[n:])
    if p.kind == "superellipse":
        exponent, aspect, angle = v
        u, w = _rotate(x, y, angle)
        return (np.abs(u) ** exponent + np.abs(w / aspect) ** exponent) <= 1
    inside = np.zeros(np.broadcast(x, y).shape, bool)
    parts = v.reshape(-1, 5)
    reach = max(math.hypot(cx, cy) + max(rx, ry) for cx, cy, rx, ry, _ in parts)
    for cx, cy, rx, ry, angle in parts:
        u, w = _rotate(x * reach - cx, y * reach - cy, angle)
        inside |= (u / rx) ** 2 + (w / ry) ** 2 <= 1
    return inside


# ---------------------------------------------------------------- appearance


@dataclass(frozen=True)
class LookParams:
    colour: tuple[int, int, int]
    second: tuple[int, int, int]
    texture: str  # solid | stripes | dots | checks | zigzag
    values: tuple[float, ...]


TEXTURE_KINDS = ("solid", "stripes", "dots", "checks", "zigzag")


@lru_cache(maxsize=4096)
def look_params(vid: int) -> LookParams:
    rng = _rng("appearance", vid)
    colour = draw_colour(rng)
    texture = TEXTURE_KINDS[int(rng.integers(len(TEXTURE_KINDS)))]
    second = (
        tuple(int(c) for c in _WHITE) if rng.uniform() < 0.5 else draw_colour(rng, (np.asarray(colour, np.float32),))
    )
    if texture == "stripes":  # angle, period, duty
        values = (rng.uniform(0, np.pi), rng.uniform(5.0, 12.0), rng.uniform(0.3, 0.6))
    elif texture == "dots":  # spacing, radius (fraction of spacing), lattice angle
        values = (rng.uniform(6.0, 11.0), rng.uniform(0.2, 0.34), rng.uniform(0, np.pi / 2))
    elif texture == "checks":  # cell, angle
        values = (rng.uniform(3.0, 6.0), rng.uniform(0, np.pi / 2))
    elif texture == "zigzag":  # period, amplitude (fraction of the wavelength), angle
        values = (rng.uniform(6.0, 11.0), rng.uniform(0.2, 0.6), rng.uniform(0, np.pi))
    else:
        values = ()
    return LookParams(colour, second, texture, tuple(float(x) for x in values))


def look_pattern(vid: int, size: int) -> np.ndarray:
    """Boolean (H, W): where the look's second colour goes, anchored to the image grid (px at 64)."""
    p = look_params(vid)
    yy, xx = (np.mgrid[:size, :size] + 0.5) * (64.0 / size)
    if p.texture == "stripes":
        angle, period, duty = p.values
        u, _ = _rotate(xx, yy, angle)
        return (u / period) % 1.0 < duty
    if p.texture == "dots":
        spacing, radius, angle = p.values
        u, w = _rotate(xx, yy, angle)
        du, dw = (u / spacing) % 1.0 - 0.5, (w / spacing) % 1.0 - 0.5
        return np.hypot(du, dw) <= radius
    if p.texture == "checks":
        cell, angle = p.values
        u, w = _rotate(xx, yy, angle)
        return (np.floor(u / cell) + np.floor(w / cell)) % 2 == 1
    if p.texture == "zigzag":
        period, amplitude, angle = p.values
        u, w = _rotate(xx, yy, angle)
        tri = np.abs((w / period) % 1.0 - 0.5) * 2  # 0…1 triangle wave along w
        return ((u / period) + amplitude * tri) % 1.0 < 0.5
    return np.zeros((size, size), bool)


# ---------------------------------------------------------------- style


@dataclass(frozen=True)
class StyleParams:
    rim: tuple[tuple[int, int, int], int] | None  # colour, width in px (at 64)
    shadow: tuple[float, float, float] | None  # dx, dy in px (at 64), darkness
    frame: tuple[tuple[int, int, int], int] | None  # colour, width in px (at 64)


STYLE_KINDS = (("rim",), ("shadow",), ("frame",), ("rim", "shadow"), ("rim", "frame"), ("shadow", "frame"))


@lru_cache(maxsize=4096)
def style_params(vid: int) -> StyleParams:
    rng = _rng("style", vid)
    kinds = STYLE_KINDS[int(rng.integers(len(STYLE_KINDS)))]
    rim = shadow = frame = None
    if "rim" in kinds:
        rim = (draw_colour(rng), int(rng.integers(1, 4)))
    if "shadow" in kinds:
        angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(2.5, 6.0)
        shadow = (length * math.cos(angle), length * math.sin(angle), float(rng.uniform(*SHADOW_DARKNESS)))
    if "frame" in kinds:
        frame = (draw_colour(rng), int(rng.integers(2, 4)))
    return StyleParams(rim, shadow, frame)


def style_colours(vid: int) -> tuple[np.ndarray, ...]:
    """The colours a style paints on or around the object (a body colour must stay away from them)."""
    p = style_params(vid)
    return tuple(np.asarray(c, np.float32) for c in (p.rim and p.rim[0], p.frame and p.frame[0]) if c)
