"""Robust image loading, SAM foreground on a random model, and seeded attribute-specific augmentation."""

import io

import numpy as np
import pytest
from PIL import Image

from ostaf import images
from ostaf.errors import OstafError
from ostaf.images import load_image
from ostaf.preprocess import augment, load_preprocessed, preprocess, sample_recipes
from ostaf.segment import build_tiny_sam, foreground_mask, load_sam
from tests.conftest import synthetic_image


def png_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kwargs.pop("format", "PNG"), **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("empty.png", b"", "empty file"),
        ("text.png", b"this is not an image at all", "cannot read"),
        ("truncated.png", png_bytes(synthetic_image(128))[:300], "cannot read"),
        ("small.png", png_bytes(synthetic_image(32)), "at least 64"),
    ],
)
def test_bad_images_give_one_error_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(OstafError, match=message) as err:
        load_image(path)
    assert name in str(err.value)


def test_pixel_limit_guards_against_bombs(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    synthetic_image(256).save(path)
    monkeypatch.setattr(images, "MAX_PIXELS", 100 * 100)
    with pytest.raises(OstafError, match="pixel limit"):
        load_image(path)


def rgba_with_hole() -> Image.Image:
    rgba = synthetic_image(96).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.pad(np.full((48, 48), 255, np.uint8), 24)))
    return rgba


@pytest.mark.parametrize(
    "make",
    [
        lambda: rgba_with_hole(),
        lambda: rgba_with_hole().convert("LA"),
        lambda: rgba_with_hole().convert("P"),
        lambda: synthetic_image(96).convert("CMYK"),
        lambda: synthetic_image(96).convert("L"),
        lambda: Image.fromarray((np.arange(96 * 96).reshape(96, 96) * 7).astype(np.uint16)),
    ],
    ids=["rgba", "la", "palette", "cmyk", "gray", "16bit"],
)
def test_every_mode_loads_as_rgb(tmp_path, make):
    image = make()
    path = tmp_path / ("ref.jpg" if image.mode == "CMYK" else "ref.png")
    image.save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (96, 96)
    if image.mode in ("RGBA", "LA"):
        assert loaded.getpixel((0, 0)) == (255, 255, 255)  # transparent → white background, not black noise


def test_exif_orientation_is_applied(tmp_path):
    image = synthetic_image(96).crop((0, 0, 96, 72))  # landscape 96 × 72
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert load_image(path).size == (72, 96)


def test_augmentation_is_seeded_and_differs_across_seeds():
    a = sample_recipes((160, 120), "appearance", 64, count=8, seed=1)
    assert a == sample_recipes((160, 120), "appearance", 64, count=8, seed=1)
    assert a != sample_recipes((160, 120), "appearance", 64, count=8, seed=2)
    assert {r.flip for r in a} == {True, False}
    image = synthetic_image(160).resize((160, 120))
    out = [augment(image, r, "appearance") for r in a]
    assert all(o.size == (64, 64) for o in out)


def test_shape_augmentation_never_crops():
    image = Image.new("RGB", (200, 100), (255, 255, 255))
    image.paste((0, 0, 0), (0, 0, 200, 100))  # black everywhere: padding must add white
    (recipe,) = sample_recipes(image.size, "shape", 64, count=8, seed=0)
    out = np.asarray(augment(image, recipe, "shape"))
    assert out.shape == (64, 64, 3)
    assert (out[32, :, 0] < 30).all()  # the full width survives along the middle row
    assert (out[0, :, 0] > 225).all()  # pad above, not a crop


def test_sam_runs_on_a_random_model_and_returns_an_image_sized_mask():
    mask = foreground_mask(synthetic_image(96).resize((120, 90)), build_tiny_sam())
    assert mask.dtype == bool and mask.shape == (90, 120)


def test_preprocess_cuts_out_and_round_trips(tmp_path):
    path = tmp_path / "ref.png"
    synthetic_image(96).save(path)
    result = preprocess(path, "appearance", 64, bank=4, seed=0, sam=build_tiny_sam())
    masked_out = ~result.mask
    if masked_out.any():  # pixels outside the mask became the plain background
        assert (np.asarray(result.image)[masked_out] == 0).all()
    loaded = load_preprocessed(result.save(tmp_path / "pre"))
    assert loaded.recipes == result.recipes and np.array_equal(loaded.mask, result.mask)


def test_missing_sam_weights_say_how_to_skip(monkeypatch):
    monkeypatch.delenv("OSTAF_SAM_WEIGHTS", raising=False)
    with pytest.raises(OstafError, match="--no-segment"):
        load_sam("auto")


def test_flip_mirrors_the_crop_pixel_for_pixel():
    from PIL import ImageOps

    from ostaf.preprocess import AugmentRecipe, augment

    image = synthetic_image(96, seed=3)
    plain = augment(image, AugmentRecipe(64, (96, 96), (10, 20), False), "appearance")
    flipped = augment(image, AugmentRecipe(64, (96, 96), (10, 20), True), "appearance")
    assert np.array_equal(np.asarray(flipped), np.asarray(ImageOps.mirror(plain)))
    assert not np.array_equal(np.asarray(flipped), np.asarray(plain))


def test_palette_png_with_real_transparency_becomes_white(tmp_path):
    """A palette image whose tRNS chunk makes index 0 transparent: those pixels load as white."""
    palette = Image.new("P", (80, 80), 0)
    palette.putpalette([10, 200, 10] + [200, 10, 10] * 255)  # index 0 green, everything else red
    palette.paste(1, (20, 20, 60, 60))
    path = tmp_path / "trns.png"
    palette.save(path, transparency=0)
    assert b"tRNS" in path.read_bytes()
    loaded = np.asarray(load_image(path))
    assert tuple(loaded[5, 5]) == (255, 255, 255)  # transparent index → white background
    assert tuple(loaded[40, 40]) == (200, 10, 10)  # opaque pixels keep their colour


def test_save_image_failing_half_way_leaves_no_partial_file(tmp_path, monkeypatch):
    from ostaf.images import save_image

    target = tmp_path / "out.png"
    save_image(synthetic_image(64, (1, 2, 3)), target)
    before = target.read_bytes()

    def half_write(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", half_write)
    with pytest.raises(OstafError, match="nothing was left half-written"):
        save_image(synthetic_image(64, (9, 9, 9)), target)
    with pytest.raises(OstafError):
        save_image(synthetic_image(64), tmp_path / "new.png")
    assert target.read_bytes() == before  # the old file is untouched
    assert not (tmp_path / "new.png").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary left behind
