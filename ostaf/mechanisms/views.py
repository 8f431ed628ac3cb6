"""Captioned views (`--views N`): copies of the reference that keep only the attribute, each under a prompt naming
what changed.

One image of a shape is also one colour, one texture, one style: a placeholder (or weights) trained on it alone
learns them together, and at generation the reference's look leaks into prompts that name another one, or the
weights stop following the prompt's words. Views make the attribute the only thing the training images share:

    shape        the silhouette filled with a flat named colour      "a blue object in the shape of *m"
                 (or, with --view-textures, a colour and a texture:  "a blue striped object in the shape of *m";
                 with --view-zoom every other one enlarged to fill
                 the frame, centred on the plain background)
    appearance   the surface cut to a named primitive inside the     "a circle in the appearance of *a"
                 object (no pixel invented: the primitive is scaled
                 to the largest disc the silhouette holds), or with
                 --view-extend a primitive of the object's own area,
                 the surface continued over it by the shifts by
                 which it repeats (its texture's period)
    style        a named primitive of the object's area in a named  "a red striped star in the style of *s"
                 colour and texture, with what the reference draws along its
                 object's edge and around it (a rim, a cast shadow:
                 `ostaf.edge_band`) drawn along the primitive's, on
                 the reference's canvas (its frame kept)

Each view is trained under its own prompt (the class from `--view-class`, its slot filled with the view's
word), so the words beside the placeholder keep working: the views teach exactly that composition. Every step
adds `--view-loss-weight` × the denoising loss of a batch of views (the placeholder's live e*, the weights at
their training strength) to the reference's own loss. The views come from the reference and its foreground
(SAM's mask, a preprocessed folder's, or, without either, the pixels that differ from the plain background its
border shows), encoded once by the VAE.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from ostaf.edge_band import EdgeBand, inside_frame
from ostaf.errors import OstafError
from ostaf.mechanisms import timesteps
from ostaf.mechanisms.base import BaseModel, Mechanism
from ostaf.outlines import OUTLINES
from ostaf.preprocess import Preprocessed
from ostaf.training_setup import Batch, Frames, autocast, encode_reference, frame_mse
from ostaf.view_words import (
    PALETTE,
    PRIMITIVES,
    TEXTURE_SECOND,
    texture_mask,
    texture_period,
    unnamed_class,
    view_class_of,
    view_fills,
)

if TYPE_CHECKING:
    from ostaf.config import TrainConfig
    from ostaf.training_setup import TrainingSetup

BORDER_TOLERANCE = 40.0  # RGB distance from the border's colour past which a pixel is foreground (no mask given)
FRAME_MAX = 1 / 10  # the widest band of one colour along the image's edge read as a frame (share of the shorter side)
SHADOW_SHADE = (0.25, 0.85)  # a cast shadow: the background's colour at these shares of its brightness
SHADOW_TOLERANCE = 25.0  # RGB distance from the black–background line within which a pixel is a shadow
ZOOM_FILL = 0.8  # --view-zoom: the enlarged silhouette's bounding box spans this share of the frame's shorter side


def border_colour(image: Image.Image) -> np.ndarray:
    """The median colour of the image's one-pixel border: its background, when it is plain."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    return np.median(np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]), axis=0)


def plain_background(image: Image.Image) -> tuple[np.ndarray, int]:
    """The colour of the picture's plain background and the width of the band of another colour along its edge
    (a frame; 0 without one): the border's colour, or the first ring inside a band of it that differs."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    edge = border_colour(image)
    height, width = pixels.shape[:2]
    for k in range(1, max(1, round(FRAME_MAX * min(height, width))) + 1):
        across, down = slice(k, width - k), slice(k, height - k)
        ring = np.concatenate([pixels[k, across], pixels[-1 - k, across], pixels[down, k], pixels[down, -1 - k]])
        if (np.linalg.norm(ring - edge, axis=1) <= BORDER_TOLERANCE).mean() >= 0.9:
            continue  # still the edge's band
        median = np.median(ring, axis=0)
        uniform = (np.linalg.norm(ring - median, axis=1) <= BORDER_TOLERANCE).mean() >= 0.8
        if uniform and np.linalg.norm(median - edge) > BORDER_TOLERANCE:
            return median, k
        break
    return edge, 0


def cast_shadow(pixels: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Boolean (H, W): pixels that are the background darkened (on the line from black to its colour, at
    `SHADOW_SHADE` of it): a shadow the object casts, not the object."""
    length = float(np.linalg.norm(background))
    direction = background / length
    along = pixels @ direction
    off = np.linalg.norm(pixels - along[..., None] * direction, axis=-1)
    return (off <= SHADOW_TOLERANCE) & (along >= SHADOW_SHADE[0] * length) & (along <= SHADOW_SHADE[1] * length)


def foreground(reference: Preprocessed, needed_by: str = "--views") -> np.ndarray:
    """The reference's foreground: its mask when segmented (not all True), else the pixels that differ from
    its plain background (inside a frame along its edge, if it has one), cast shadows left out; one clear
    error, naming the option `needed_by` it, when neither finds one."""
    if not reference.mask.all():
        return reference.mask
    pixels = np.asarray(reference.image.convert("RGB"), dtype=np.float32)
    background, band = plain_background(reference.image)
    mask = (np.linalg.norm(pixels - background, axis=-1) > BORDER_TOLERANCE) & ~cast_shadow(pixels, background)
    mask &= inside_frame(mask.shape, band)
    share = mask.mean()
    if not 0.005 < share < 0.95:
        raise OstafError(
            f"{needed_by} needs the reference's foreground: it has no mask and no plain background to find one "
            f"({share:.0%} of the pixels differ from the border); segment it (--segment with SAM weights) or "
            "pass an `ostaf preprocess` folder with its mask.png"
        )
    return mask


def recolour(image: Image.Image, mask: np.ndarray, colour: tuple[int, int, int], texture: str = "plain") -> Image.Image:
    """`image` with the pixels of `mask` filled with `colour` in `texture` (its second colour white; the rest of
    the image kept as it is)."""
    pixels = np.asarray(image.convert("RGB")).copy()
    height, width = mask.shape
    second = texture_mask(texture, height, width, texture_period(height, width))
    pixels[mask] = colour
    pixels[mask & second] = TEXTURE_SECOND
    return Image.fromarray(pixels)


def zoomed(mask: np.ndarray, fill: float = ZOOM_FILL) -> np.ndarray:
    """`mask`'s silhouette enlarged (its aspect kept) until its bounding box spans `fill` of the frame's shorter
    side, centred; a silhouette already that large is kept as it is."""
    rows, cols = np.nonzero(mask)
    crop = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = mask.shape
    scale = fill * min(height, width) / max(crop.shape)
    if scale <= 1:
        return mask
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))  # PIL: (w, h)
    big = np.asarray(Image.fromarray(crop.astype(np.uint8) * 255).resize(size, Image.Resampling.BILINEAR)) >= 128
    out = np.zeros_like(mask, dtype=bool)
    top, left = (height - big.shape[0]) // 2, (width - big.shape[1]) // 2
    out[top : top + big.shape[0], left : left + big.shape[1]] = big
    return out


def on_background(image: Image.Image, mask: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    """The plain background `image`'s border shows, and `mask`'s silhouette zoomed on it (to be filled)."""
    plain = np.empty((*mask.shape, 3), np.uint8)
    plain[:] = border_colour(image).round().astype(np.uint8)
    return Image.fromarray(plain), zoomed(mask)


def primitive(name: str, size: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """Boolean (H, W) mask of a named primitive inscribed in the disc of `radius` px around `centre` (x, y)."""
    height, width = size
    yy, xx = np.mgrid[:height, :width] + 0.5
    x, y = (xx - centre[0]) / radius, (yy - centre[1]) / radius  # the disc is the unit disc
    if name == "circle":
        return np.hypot(x, y) <= 1
    if name == "square":
        return (np.abs(x) <= 0.7071) & (np.abs(y) <= 0.7071)
    if name == "triangle":  # apex up, vertices on the circle
        return (y <= 0.5) & (y >= -1 + 1.7321 * np.abs(x))
    if name == "diamond":
        return np.abs(x) + np.abs(y) <= 1
    if name in OUTLINES:  # star, heart, cross, ring, crescent: as the world draws them
        return OUTLINES[name](x, y)
    if name == "hexagon":  # vertices on the circle, two of them left and right
        return (np.abs(y) <= np.sqrt(3) / 2) & (np.abs(y) / np.sqrt(3) + np.abs(x) <= 1)
    raise ValueError(f"unknown primitive {name!r}; known: {', '.join(PRIMITIVES)}")


def largest_disc(mask: np.ndarray) -> tuple[tuple[float, float], float]:
    """Centre (x, y) and radius in px of the largest disc inside `mask` (its deepest point)."""
    from scipy.ndimage import distance_transform_edt

    depth = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]  # outside the image counts as background
    row, col = np.unravel_index(int(depth.argmax()), depth.shape)
    return (col + 0.5, row + 0.5), float(depth[row, col]) - 0.5


def cut_to(image: Image.Image, mask: np.ndarray, shape: str) -> Image.Image:
    """The surface of `mask` cut to the primitive `shape` inside it, on the plain background."""
    centre, radius = largest_disc(mask)
    if radius < 2:
        raise OstafError(
            f"--views: the reference's object holds no disc wider than {2 * radius:.0f} px to cut a {shape} from; "
            "use a larger image of the surface, or drop --views"
        )
    keep = primitive(shape, mask.shape, centre, radius) & mask
    pixels = np.asarray(image.convert("RGB")).copy()
    pixels[~keep] = border_colour(image).round().astype(np.uint8)
    return Image.fromarray(pixels)


# px: the longest shift searched for the surface's period — a texture of the world's 64 px renders repeats within
# it; a larger reference whose period is longer gets the best shorter shift (close to the nearest pixel's colour)
SHIFT_REACH = 12
MIN_OVERLAP = 0.25  # a shift counts where at least this share of the surface still overlaps itself


def surface_shifts(pixels: np.ndarray, source: np.ndarray, reach: int = SHIFT_REACH) -> list[tuple[int, int]]:
    """Two independent shifts (dy, dx) by which the surface repeats: the one whose shifted copy differs least
    from the surface where both are `source` (the masked mean squared difference, over shifts up to `reach` px
    that keep `MIN_OVERLAP` of it; ties go to the shorter), then the best one not parallel to it. Stripes give a
    shift along them and their period across; checks and dots their lattice; a flat colour two unit steps."""
    height, width = source.shape
    values = pixels.astype(np.float64)
    least = MIN_OVERLAP * source.sum()
    scored = []
    for dy in range(-reach, reach + 1):
        for dx in range(0, reach + 1):
            if (dx == 0 and dy <= 0) or dy * dy + dx * dx > reach * reach:
                continue  # one of ±d (the difference is symmetric), and no zero shift
            a = (slice(max(0, -dy), height - max(0, dy)), slice(0, width - dx))  # x, where x + d is inside too
            b = (slice(max(0, dy), height - max(0, -dy)), slice(dx, width))  # x + d
            both = source[a] & source[b]
            if both.sum() < least:
                continue
            difference = ((values[a] - values[b]) ** 2).sum(-1)[both].mean()
            scored.append((round(float(difference), 6), dy * dy + dx * dx, (dy, dx)))
    if not scored:
        return [(0, 1), (1, 0)]
    scored.sort()
    first = scored[0][2]
    second = next((d for _, _, d in scored if d[0] * first[1] - d[1] * first[0] != 0), (first[1], -first[0]))
    return [first, second]


@dataclass(frozen=True)
class Surface:
    """The reference's surface as `--view-extend` continues it, found once for all its views: its pixels, where
    they count (the object's interior, one pixel in from its edge, where a render or a cut-out blends into the
    background) and the two shifts by which it repeats."""

    pixels: np.ndarray  # (H, W, 3) uint8
    source: np.ndarray  # (H, W) bool
    shifts: list[tuple[int, int]]

    @classmethod
    def of(cls, image: Image.Image, mask: np.ndarray) -> Surface:
        from scipy.ndimage import binary_erosion

        pixels = np.asarray(image.convert("RGB"))
        source = binary_erosion(mask, iterations=1)
        source = source if source.sum() >= 16 else mask
        return cls(pixels, source, surface_shifts(pixels, source))


def extend_surface(surface: Surface, target: np.ndarray, steps: int = 4) -> np.ndarray:
    """(H, W, 3): `target`'s pixels filled from `surface` — kept where it is, elsewhere copied from the nearest
    point of it that a whole number of its repeat shifts away reaches (up to `steps` of each), and past that from
    the nearest surface pixel."""
    from scipy.ndimage import distance_transform_edt

    pixels, source = surface.pixels, surface.source
    out = np.zeros((*source.shape, 3), np.uint8)
    filled = target & source
    out[filled] = pixels[filled]
    (ay, ax), (by, bx) = surface.shifts
    rows, cols = np.nonzero(target & ~filled)
    combos = sorted(
        ((i, j) for i in range(-steps, steps + 1) for j in range(-steps, steps + 1) if (i, j) != (0, 0)),
        key=lambda ij: (ij[0] * ay + ij[1] * by) ** 2 + (ij[0] * ax + ij[1] * bx) ** 2,
    )
    open_ = np.ones(rows.shape, bool)
    for i, j in combos:
        r, c = rows + i * ay + j * by, cols + i * ax + j * bx
        inside = open_ & (r >= 0) & (r < source.shape[0]) & (c >= 0) & (c < source.shape[1])
        inside[inside] = source[r[inside], c[inside]]
        out[rows[inside], cols[inside]] = pixels[r[inside], c[inside]]
        open_ &= ~inside
    if open_.any():  # beyond every repeat: the nearest surface pixel
        _, (near_r, near_c) = distance_transform_edt(~source, return_indices=True)
        r, c = rows[open_], cols[open_]
        out[r, c] = pixels[near_r[r, c], near_c[r, c]]
    return out


@lru_cache
def unit_area(shape: str) -> float:
    """The area of the primitive `shape` inscribed in a disc of radius 1 (measured on a fine grid)."""
    return float(primitive(shape, (1000, 1000), (500.0, 500.0), 400.0).sum()) / 400.0**2


def of_its_area(mask: np.ndarray, shape: str, flag: str) -> np.ndarray:
    """The primitive `shape` of the area of `mask`'s object, at its centroid (`flag`: what needs it, for the
    error on an object too small to draw one)."""
    rows, cols = np.nonzero(mask)
    if rows.size < 16:
        raise OstafError(f"{flag}: the reference's object covers under 16 px; use a larger image, or drop --views")
    radius = float(np.sqrt(rows.size / unit_area(shape)))
    return primitive(shape, mask.shape, (cols.mean() + 0.5, rows.mean() + 0.5), radius)


def extended_to(image: Image.Image, mask: np.ndarray, shape: str, surface: Surface | None = None) -> Image.Image:
    """The surface of `mask` extended over the primitive `shape` of the object's own area at its centroid, on the
    plain background (`--view-extend`: the look at the reference's scale on a whole named outline); `surface`:
    the reference's, when several views share it."""
    target = of_its_area(mask, shape, "--view-extend")
    pixels = np.empty((*mask.shape, 3), np.uint8)
    pixels[:] = border_colour(image).round().astype(np.uint8)
    pixels[target] = extend_surface(surface or Surface.of(image, mask), target)[target]
    return Image.fromarray(pixels)


def restyled(mask: np.ndarray, fill: dict[str, str], band: EdgeBand) -> Image.Image:
    """A style's view: the primitive `fill["shape"]` of the object's area at its centroid, in the colour and
    texture `fill` names, with the reference's edge `band` drawn along it (on its canvas)."""
    target = of_its_area(mask, fill["shape"], "--views on a style")
    everywhere = np.ones(mask.shape, bool)
    fill_image = recolour(
        Image.fromarray(band.canvas), everywhere, PALETTE[fill["colour"]], fill.get("texture", "plain")
    )
    return Image.fromarray(band.restyled(target, np.asarray(fill_image)))


def style_fills(fills: list[dict[str, str]], band: EdgeBand) -> list[dict[str, str]]:
    """`fills` with each colour the reference's band draws with (a rim or a shadow would vanish into it)
    replaced by the next one that differs from them."""
    allowed = [name for name, rgb in PALETTE.items() if band.allows(rgb)] or list(PALETTE)
    return [fill | {"colour": allowed[i % len(allowed)]} for i, fill in enumerate(fills)]


def make_view(
    attribute: str,
    image: Image.Image,
    mask: np.ndarray,
    fill: dict[str, str],
    zoom: bool,
    extend: Surface | None = None,
    band: EdgeBand | None = None,
) -> Image.Image:
    """One view of `attribute`: the reference with what is not the attribute changed to `fill`'s words (`zoom`: a
    shape's silhouette enlarged on the plain background; `extend`: an appearance's surface, extended over a
    whole primitive instead of cut inside the object; `band`: a style's edge, drawn around the fill)."""
    if attribute == "shape":
        if zoom:
            image, mask = on_background(image, mask)
        return recolour(image, mask, PALETTE[fill["colour"]], fill.get("texture", "plain"))
    if attribute == "style":
        if band is None:
            raise ValueError("a style's view is drawn from the reference's edge band: pass it")
        return restyled(mask, fill, band)
    if extend is not None:
        return extended_to(image, mask, fill["shape"], extend)
    return cut_to(image, mask, fill["shape"])


def with_article(phrase: str) -> str:
    """``a``/``an`` before `phrase` as English writes it ('an object in the shape of *m': the words a user types)."""
    return f"{'an' if phrase[:1].lower() in 'aeiou' else 'a'} {phrase}"


def view_prompts(attribute, view_class: str, fills: list[dict[str, str]]) -> list[str]:
    """Each view's training prompt: ``a {view class with its words} in the {attribute} of {token}``."""
    return [attribute.training_prompt(view_class.format(**fill)) for fill in fills]


@dataclass
class Views:
    """The views as VAE posteriors, and what their prompts are."""

    words: list[str]  # what each view changed to: its colour (and texture) for a shape, its primitive ("": unnamed)
    mean: torch.Tensor  # (N, 4, h, w)
    std: torch.Tensor
    prompts: list[str]


class CaptionedViews(Mechanism):
    """Adds the views' denoising loss, each view under its own prompt, to every step (its frames)."""

    def __init__(self, views: Views, weight: float) -> None:
        self.views, self.weight = views, weight
        self.input_ids: torch.Tensor | None = None  # (E, N, 77), tokenised once the placeholder exists

    @classmethod
    def build(cls, config: TrainConfig, base: BaseModel) -> CaptionedViews | None:
        if not config.views:
            return None
        from ostaf.attributes import get_attribute

        attribute = get_attribute(config.attribute)
        fills = view_fills(attribute.name, config.views, config.view_textures)
        mask = foreground(base.reference)
        # the surface's repeat shifts (`--view-extend`), a style's edge band: read once for every view
        surface = Surface.of(base.reference.image, mask) if config.view_extend else None
        band = None
        if attribute.name == "style":
            pixels = np.asarray(base.reference.image.convert("RGB"))
            band = EdgeBand.of(pixels, mask, plain_background(base.reference.image)[1])
            fills = style_fills(fills, band)
        images = [
            make_view(
                attribute.name,
                base.reference.image,
                mask,
                fill,
                zoom=config.view_zoom and i % 2 == 1,
                extend=surface,
                band=band,
            )
            for i, fill in enumerate(fills)
        ]
        first = base.reference.recipes[:1]  # one augmentation per view: a crop could cut its primitive
        posteriors = [encode_reference(base.pipe, replace(base.reference, image=i, recipes=first)) for i in images]
        mean, std = (torch.cat(parts) for parts in zip(*posteriors, strict=True))
        template = view_class_of(attribute.name, config.view_class, config.view_textures)
        words = [" ".join(fill.values()) for fill in fills]
        prompts = view_prompts(attribute, template, fills)
        if config.view_unnamed:  # each view again, under the prompt that names none of its words
            bare = with_article(f"{unnamed_class(template)} {attribute.phrase()}")
            words, prompts = [*words, *[""] * len(fills)], [*prompts, *[bare] * len(fills)]
            mean, std = mean.repeat(2, 1, 1, 1), std.repeat(2, 1, 1, 1)
        return cls(Views(words, mean, std, prompts), config.view_loss_weight)

    def attach(self, setup: TrainingSetup) -> None:
        self.views.mean, self.views.std = self.views.mean.to(setup.device), self.views.std.to(setup.device)
        self.input_ids = setup.prompts.ids(self.views.prompts)

    def frames(self, setup: TrainingSetup, batch: Batch, generator: torch.Generator | None) -> Frames:
        if generator is None:
            raise ValueError("the views draw their batch from the run's generator: pass it")
        return view_frames(setup, self.views, self.input_ids, generator)._replace(weight=self.weight)


def view_frames(setup: TrainingSetup, views: Views, input_ids: torch.Tensor, generator: torch.Generator) -> Frames:
    """A batch of views under their own prompts (the live e* in them), drawn from `generator`."""
    batch = setup.config.batch_size
    pick = torch.randint(0, views.mean.shape[0], (batch,), generator=generator)
    eps = torch.randn((batch, *views.mean.shape[1:]), generator=generator).to(setup.device)
    noise = torch.randn((batch, *views.mean.shape[1:]), generator=generator).to(setup.device)
    t = timesteps.sample_timesteps(setup, batch, generator).to(setup.device)
    with autocast(setup):  # only the drawn views' prompts, each with the live e*
        cond = setup.prompts.encode(input_ids[:, pick.to(input_ids.device)])
    return Frames(views.mean[pick] + views.std[pick] * eps, noise, t, cond)


def views_loss(setup: TrainingSetup, views: Views, input_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The noise-prediction MSE of a batch of views under their own prompts, in a pass of their own."""
    return frame_mse(setup, view_frames(setup, views, input_ids, generator))
