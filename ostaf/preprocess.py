"""Preprocess a reference: foreground (SAM), attribute-specific augmentation, and the recipe.

    shape               pad to square → resize (never a crop: the outline must stay whole)
    appearance, style   foreground cut out onto a plain background → resize the smallest side
                        → random crop → horizontal flip with p = 0.5 (the authors' augmentation)

Augmentation is seeded and described by `AugmentRecipe`s, so training can encode
a bank of augmented latents once and sample from it with the same distribution.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from ostaf.attributes import get_attribute
from ostaf.errors import OstafError
from ostaf.images import fit_square, load_image, save_image
from ostaf.io import write_json

if TYPE_CHECKING:
    from ostaf.config import TrainConfig

BACKGROUND = (0, 0, 0)  # the authors multiply the image by the binary SAM mask


@dataclass(frozen=True)
class AugmentRecipe:
    """One augmentation of the reference: a square crop box in the resized image, and a flip."""

    resolution: int
    resized: tuple[int, int]  # (w, h) after the smallest-side resize (or the padded square)
    crop: tuple[int, int]  # (left, top) of the resolution × resolution crop
    flip: bool


def sample_recipes(
    size: tuple[int, int], attribute: str, resolution: int, count: int, seed: int
) -> list[AugmentRecipe]:
    """`count` seeded recipes; shape gets one, since its augmentation has nothing random."""
    if get_attribute(attribute).name == "shape":
        return [AugmentRecipe(resolution, (resolution, resolution), (0, 0), False)]
    w, h = size
    scale = resolution / min(w, h)
    resized = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    rng = np.random.default_rng(seed)
    return [
        AugmentRecipe(
            resolution,
            resized,
            (int(rng.integers(0, resized[0] - resolution + 1)), int(rng.integers(0, resized[1] - resolution + 1))),
            bool(rng.random() < 0.5),
        )
        for _ in range(count)
    ]


def augment(image: Image.Image, recipe: AugmentRecipe, attribute: str) -> Image.Image:
    if get_attribute(attribute).name == "shape":
        return fit_square(image, recipe.resolution, pad=True)
    resized = image.resize(recipe.resized, Image.Resampling.BICUBIC)
    left, top = recipe.crop
    out = resized.crop((left, top, left + recipe.resolution, top + recipe.resolution))
    return ImageOps.mirror(out) if recipe.flip else out


def cut_out(image: Image.Image, mask: np.ndarray, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """The foreground on a plain background."""
    plain = Image.new("RGB", image.size, background)
    return Image.composite(image, plain, Image.fromarray(mask.astype(np.uint8) * 255))


@dataclass
class Preprocessed:
    image: Image.Image  # the reference as training sees it before augmentation
    mask: np.ndarray  # bool (H, W), all True when segmentation was skipped
    recipes: list[AugmentRecipe]
    attribute: str

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        save_image(self.image, folder / "reference.png")
        save_image(Image.fromarray(self.mask.astype(np.uint8) * 255), folder / "mask.png")
        write_json(folder / "recipe.json", {"attribute": self.attribute, "recipes": [asdict(r) for r in self.recipes]})
        return folder


def preprocess(
    path: str | Path, attribute: str, resolution: int, bank: int = 8, seed: int = 42, sam=None
) -> Preprocessed:
    """Load, segment (if `sam` is given), and plan `bank` augmentations of one reference."""
    image = load_image(path)
    if sam is None:
        mask = np.ones((image.height, image.width), dtype=bool)
    else:
        from ostaf.segment import foreground_mask

        mask = foreground_mask(image, sam)
        if get_attribute(attribute).name != "shape":
            image = cut_out(image, mask)
    return Preprocessed(image, mask, sample_recipes(image.size, attribute, resolution, bank, seed), attribute)


def preprocess_reference(
    path: str | Path, attribute: str, resolution: int, bank: int, seed: int, sam_spec: str | None
) -> Preprocessed:
    """`preprocess` with SAM loaded from `sam_spec` (None: no segmentation) only after the image was read, so a
    bad image is the error a user sees first, not missing SAM weights."""
    load_image(path)  # one clear error for an unreadable or odd image, before any weights are looked for
    from ostaf.segment import load_sam  # segment-anything: only when segmenting

    return preprocess(path, attribute, resolution, bank, seed, load_sam(sam_spec) if sam_spec else None)


def load_preprocessed(folder: str | Path) -> Preprocessed:
    folder = Path(folder)
    try:
        recipe = json.loads((folder / "recipe.json").read_text())
    except (OSError, ValueError) as err:
        raise OstafError(
            f"{folder} is a folder but not an `ostaf preprocess` output (recipe.json: {err.__class__.__name__}): "
            f"pass an image file, or write the folder with `ostaf preprocess --image IMAGE --out {folder}`"
        ) from None
    recipes = [
        AugmentRecipe(r["resolution"], tuple(r["resized"]), tuple(r["crop"]), r["flip"]) for r in recipe["recipes"]
    ]
    mask = np.asarray(load_image(folder / "mask.png").convert("L")) > 127
    return Preprocessed(load_image(folder / "reference.png"), mask, recipes, recipe["attribute"])


def augment_mask(mask: np.ndarray, recipe: AugmentRecipe, attribute: str) -> np.ndarray:
    """The reference mask under exactly `augment`'s geometry (resize, crop, flip, or pad); padding is background.

    The mask goes through `augment` itself, inverted, so that its white padding lands on the background.
    """
    inverted = Image.fromarray(np.where(mask, 0, 255).astype(np.uint8)).convert("RGB")
    return np.asarray(augment(inverted, recipe, attribute))[..., 0] < 128


def load_reference(config: TrainConfig, resolution: int) -> Preprocessed:
    """A folder from `ostaf preprocess`, or the image preprocessed now (SAM only if `segment`): the one way a
    training run and the pipeline's preprocess step read a reference."""
    if Path(config.image).is_dir():
        return load_preprocessed(config.image)
    sam = config.sam if config.segment else None
    return preprocess_reference(config.image, config.attribute, resolution, config.augment_bank, config.seed, sam)
