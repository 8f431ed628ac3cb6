"""Images in and out: load a reference as RGB, fit it to the training size, save and grid outputs."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from ostaf.errors import OstafError
from ostaf.io import atomic_write

if TYPE_CHECKING:
    import torch

MIN_SIDE = 64
MAX_PIXELS = 8192 * 8192


def load_image(path: str | Path) -> Image.Image:
    """An RGB image with EXIF orientation applied; transparent pixels become white background."""
    path = Path(path)
    if not path.is_file():
        raise OstafError(f"reference image {path} does not exist: pass the path of a PNG/JPEG file")
    if path.stat().st_size == 0:
        raise OstafError(f"image {path} is an empty file: pass a PNG or JPEG")
    try:
        with Image.open(path) as opened:
            if opened.width * opened.height > MAX_PIXELS:
                raise OstafError(
                    f"image {path} is {opened.width}x{opened.height}, over the {MAX_PIXELS:,}-pixel limit "
                    "(decompression-bomb guard): downscale it first"
                )
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise OstafError(f"cannot read image {path}: {err}; pass an uncorrupted PNG or JPEG") from None
    if min(image.size) < MIN_SIDE:
        raise OstafError(f"image {path} is {image.width}x{image.height}; it needs at least {MIN_SIDE} px per side")
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        array = 255.0 * array / max(float(array.max()), 1.0)
        return Image.fromarray(array.astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def fit_square(image: Image.Image, resolution: int, pad: bool) -> Image.Image:
    """Shape keeps the whole outline (pad to square, resize); other attributes resize and centre-crop."""
    if pad:
        side = max(image.size)
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        return canvas.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return ImageOps.fit(image, (resolution, resolution), Image.Resampling.BICUBIC)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) in [-1, 1], the VAE's input range."""
    import torch

    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


def save_image(image: Image.Image, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


@lru_cache(maxsize=1)
def label_font() -> ImageFont.FreeTypeFont:
    """DejaVu Sans, which matplotlib ships (it has λ; PIL's built-in bitmap font has no Greek)."""
    import os

    import matplotlib

    return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"), 10)


def make_grid(
    rows: list[list[Image.Image]], col_labels: list[str] | None = None, row_labels: list[str] | None = None
) -> Image.Image:
    """Tile images row by row, with optional labels on top and on the left."""
    w, h = rows[0][0].size
    top = 14 if col_labels else 0
    left = 44 if row_labels else 0
    grid = Image.new("RGB", (left + w * len(rows[0]), top + h * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    font = label_font()
    for c, label in enumerate(col_labels or []):
        draw.text((left + c * w + 2, 1), label, fill=(0, 0, 0), font=font)
    for r, row in enumerate(rows):
        if row_labels:
            draw.text((2, top + r * h + 2), row_labels[r], fill=(0, 0, 0), font=font)
        for c, image in enumerate(row):
            grid.paste(image, (left + c * w, top + r * h))
    return grid
