"""Attribute World: seeded procedural images of one object on a known background.

Independent factors, each with exact ground truth:

    shape       circle, square, triangle, star, heart, cross, ring, crescent, diamond, hexagon
    appearance  colour (8) × texture (solid, striped, dotted, checkered)
    style       flat, outlined (a magenta rim), shadowed (a drop shadow), framed (a slate picture frame)
    jitter      position and scale

Styles change how the object is drawn, never what it is: the silhouette of an outlined or shadowed
object is the flat one (the rim is inside it, the shadow outside), and the frame runs along the
image's edge, where no object reaches. `render(factors)` is a pure function of the factors;
`sample(seed)` draws factors from a seed. Some (shape, colour, texture, style) combinations are held
out of pretraining (`is_held_out`), so personalisation is tested on combinations the model never saw.

World v3 adds values that no word names (`ostaf.world.unnamed`): a factor may hold `shape#17`,
`look#204` (as both colour and texture) or `style#9`; captions then leave the value's word out
("a red striped object", "a star", "a blue dotted ring, stylized"). `sample_world(seed)` draws the
v3 pretraining mix; `sample` still draws exactly v2's named factors, so every v2 reference is unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ostaf.outlines import OUTLINES
from ostaf.view_words import PALETTE, TEXTURE_SECOND, texture_mask
from ostaf.view_words import TEXTURES as TEXTURE_FILLS  # the same four, by the captions' words
from ostaf.world import unnamed as un

SIZE = 64
BACKGROUND = (222, 208, 176)  # pale beige: far from every palette colour and from white
SHAPES = ("circle", "square", "triangle", "star", "heart", "cross", "ring", "crescent", "diamond", "hexagon")
COLOURS = PALETTE  # the colour words and their sRGB (`ostaf.view_words`: `--views` paints with them)
TEXTURES = ("solid", "striped", "dotted", "checkered")
TEXTURE_WORDS = dict(zip(TEXTURES, TEXTURE_FILLS, strict=True))  # the captions' words (solid: "plain")
STYLES = ("flat", "outlined", "shadowed", "framed")
PERIOD = 8  # texture period in px
SECOND = TEXTURE_SECOND  # the second colour of every texture: white stripes, dots and squares
OUTLINE = (240, 0, 160)  # the rim of the outlined style: magenta, far from the palette, white and background
OUTLINE_WIDTH = 2  # px (at 64 px)
SHADOW = (90, 80, 60)  # the drop shadow: a dark version of the background
SHADOW_OFFSET = 4  # px down and to the right
FRAME = (60, 60, 140)  # the framed style: a slate-blue band along the image edge
FRAME_WIDTH = 3  # px; objects stay inside it (centre 0.4–0.6, radius ≤ 0.34 of the image)


@dataclass(frozen=True)
class Factors:
    shape: str
    colour: str
    texture: str
    style: str = "flat"
    cx: float = 0.5  # centre, as a fraction of the image
    cy: float = 0.5
    scale: float = 0.32  # radius, as a fraction of the image

    def look(self) -> str:
        """The appearance in words: "red striped" ("" for an unnamed look)."""
        return "" if un.is_unnamed(self.colour) else f"{self.colour} {TEXTURE_WORDS[self.texture]}"

    def shape_word(self) -> str:
        """The shape's noun: its name, or "object" for an unnamed silhouette."""
        return "object" if un.is_unnamed(self.shape) else self.shape

    def style_suffix(self) -> str:
        """ ", outlined style" for a named style, ", stylized" for an unnamed one, "" for flat."""
        if self.style == "flat":
            return ""
        return f", {un.UNNAMED_STYLE_WORD}" if un.is_unnamed(self.style) else f", {self.style} style"

    def caption(self) -> str:
        return " ".join(w for w in ("a", self.look(), self.shape_word()) if w) + self.style_suffix()

    def unnamed(self) -> tuple[str, ...]:
        """The attributes whose value no word names."""
        values = {"shape": self.shape, "appearance": self.colour, "style": self.style}
        return tuple(a for a, v in values.items() if un.is_unnamed(v))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class WorldImage:
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool: the object's silhouette
    factors: Factors

    @property
    def caption(self) -> str:
        return self.factors.caption()


def is_held_out(shape: str, colour: str, texture: str, style: str = "flat") -> bool:
    """A fixed 1-in-7 set of (shape, colour, texture, style) combinations that pretraining never sees."""
    index = ((SHAPES.index(shape) * 8 + list(COLOURS).index(colour)) * 4 + TEXTURES.index(texture)) * 4
    return ((index + STYLES.index(style)) * 37) % 7 == 3


def silhouette(shape: str, size: int = SIZE, cx: float = 0.5, cy: float = 0.5, scale: float = 0.32) -> np.ndarray:
    """Boolean mask of `shape` centred at (cx, cy) with radius `scale` (fractions of the image)."""
    yy, xx = (np.mgrid[:size, :size] + 0.5) / size
    x, y = (xx - cx) / scale, (yy - cy) / scale  # unit coordinates: the shape fits in [-1, 1]²
    r = np.hypot(x, y)
    if shape == "circle":
        return r <= 1
    if shape == "square":
        return (np.abs(x) <= 0.8) & (np.abs(y) <= 0.8)
    if shape == "triangle":
        return (y <= 0.75) & (y >= -1 + 2.3 * np.abs(x))
    if shape in OUTLINES:  # star, heart, cross, ring, crescent: shared with the appearance views
        return OUTLINES[shape](x, y)
    if shape == "diamond":
        return np.abs(x) + np.abs(y) <= 1
    if shape == "hexagon":
        return (np.abs(y) <= 0.87) & (np.abs(y) * 0.577 + np.abs(x) <= 1)
    if shape.startswith(un.PREFIX["shape"]):
        return un.unnamed_shape_inside(un.value_id(shape), x, y)
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """`mask` shrunk by `steps` pixels (4-neighbourhood); outside the image counts as background."""
    inner = mask.copy()
    for _ in range(steps):
        padded = np.pad(inner, 1)
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return inner


def dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    return ~erode(~mask, steps)


def texture_pattern(texture: str, size: int = SIZE) -> np.ndarray:
    """Boolean (H, W): True where the texture's second colour goes (drawn as `--view-textures` draws it)."""
    if texture not in TEXTURE_WORDS:
        raise ValueError(f"unknown texture {texture!r}; known: {', '.join(TEXTURES)}")
    return texture_mask(TEXTURE_WORDS[texture], size, size, PERIOD)


def frame_interior(size: int = SIZE) -> np.ndarray:
    """Everything but the outer `FRAME_WIDTH` px of the image (where the framed style paints)."""
    inside = np.zeros((size, size), bool)
    w = round(FRAME_WIDTH * size / SIZE)
    inside[w:-w, w:-w] = True
    return inside


def _body(f: Factors, size: int) -> np.ndarray:
    """(H, W, 3) the object's colours everywhere (its look, anchored to the image grid)."""
    body = np.empty((size, size, 3), np.uint8)
    if un.is_unnamed(f.colour):
        params = un.look_params(un.value_id(f.colour))
        body[:] = params.colour
        body[un.look_pattern(un.value_id(f.colour), size)] = params.second
        return body
    body[:] = COLOURS[f.colour]
    body[texture_pattern(f.texture, size)] = SECOND
    return body


def style_parts(style: str) -> un.StyleParams:
    """A style as its parts: rim (colour, width), shadow (dx, dy, darkness), frame (colour, width)."""
    if un.is_unnamed(style):
        return un.style_params(un.value_id(style))
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; known: {', '.join(STYLES)} or style#<id>")
    darkness = SHADOW[0] / BACKGROUND[0]
    return un.StyleParams(
        rim=(OUTLINE, OUTLINE_WIDTH) if style == "outlined" else None,
        shadow=(SHADOW_OFFSET, SHADOW_OFFSET, darkness) if style == "shadowed" else None,
        frame=(FRAME, FRAME_WIDTH) if style == "framed" else None,
    )


def render(factors: Factors, size: int = SIZE) -> WorldImage:
    """The image of `factors` (a pure function)."""
    f = factors
    parts = style_parts(f.style)
    mask = silhouette(f.shape, size, f.cx, f.cy, f.scale)
    image = np.empty((size, size, 3), np.uint8)
    image[:] = BACKGROUND
    if parts.shadow:
        dx, dy, darkness = parts.shadow
        colour = SHADOW if f.style == "shadowed" else tuple(round(c * darkness) for c in BACKGROUND)
        cast = silhouette(f.shape, size, f.cx + dx / SIZE, f.cy + dy / SIZE, f.scale)
        image[cast & ~mask] = colour
    body = _body(f, size)
    if parts.rim:
        colour, width = parts.rim
        body[mask & ~erode(mask, round(width * size / SIZE))] = colour
    image[mask] = body[mask]
    if parts.frame:
        colour, width = parts.frame
        inside = np.zeros((size, size), bool)
        w = round(width * size / SIZE)
        inside[w:-w, w:-w] = True
        image[~inside] = colour
    return WorldImage(image, mask, factors)


def sample_factors(rng: np.random.Generator, held_out: bool | None = False, style: str | None = "flat") -> Factors:
    """Random factors; `held_out=False` avoids held-out combinations, True draws only them, None ignores.

    `style=None` draws the style too; a style name fixes it."""
    while True:
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        texture = TEXTURES[rng.integers(len(TEXTURES))]
        drawn = style or STYLES[rng.integers(len(STYLES))]
        if held_out is None or is_held_out(shape, colour, texture, drawn) == held_out:
            break
    return Factors(
        shape,
        colour,
        texture,
        drawn,
        cx=float(rng.uniform(0.4, 0.6)),
        cy=float(rng.uniform(0.4, 0.6)),
        scale=float(rng.uniform(0.26, 0.34)),
    )


def sample(seed: int, held_out: bool | None = False, style: str | None = "flat") -> WorldImage:
    """One world image, fully determined by `seed` (and whether its style is drawn or fixed)."""
    return render(sample_factors(np.random.default_rng(seed), held_out, style))


# ---------------------------------------------------------------- world v3: the pretraining mix


UNNAMED_SHARE = {"shape": 0.35, "appearance": 0.35, "style": 0.3}  # v3 pretraining: P(value unnamed)


def look_colours(colour: str) -> tuple[np.ndarray, ...]:
    """The RGB colours an appearance paints (body, second)."""
    if un.is_unnamed(colour):
        p = un.look_params(un.value_id(colour))
        return np.asarray(p.colour, np.float32), np.asarray(p.second, np.float32)
    return np.asarray(COLOURS[colour], np.float32), np.asarray(SECOND, np.float32)


def style_fits(colour: str, style: str) -> bool:
    """Whether a style's rim stays visible on a look: its colour far (RGB > 90) from the look's."""
    rim = style_parts(style).rim
    return rim is None or all(np.linalg.norm(np.asarray(rim[0], np.float32) - c) > 90 for c in look_colours(colour))


def with_value(factors: Factors, attribute: str, value: str) -> Factors:
    """`factors` with one attribute's value replaced (an appearance sets colour and texture)."""
    from dataclasses import replace

    if attribute == "shape":
        return replace(factors, shape=value)
    if attribute == "appearance":
        return replace(factors, colour=value, texture=value if un.is_unnamed(value) else factors.texture)
    return replace(factors, style=value)


def sample_world_factors(rng: np.random.Generator, share: dict[str, float] = UNNAMED_SHARE) -> Factors:
    """One v3 pretraining draw: v2's held-in named factors, each attribute swapped for a seen unnamed
    value with probability `share[attribute]`; a rim that would vanish on the look is drawn again."""
    f = sample_factors(rng, held_out=False, style=None)
    for attribute in ("shape", "appearance", "style"):
        if rng.uniform() < share[attribute]:
            f = with_value(f, attribute, un.unnamed(attribute, int(rng.integers(un.SEEN_POOL))))
    while not style_fits(f.colour, f.style):
        f = with_value(f, "style", un.unnamed("style", int(rng.integers(un.SEEN_POOL))))
    return f


def sample_world(seed: int) -> WorldImage:
    """The v3 pretraining image `seed` (named and seen-unnamed values mixed)."""
    return render(sample_world_factors(np.random.default_rng(seed)))
