"""A style's views (`--views` on a style): the reference's edge band — rim, cast shadow — drawn around named
outlines in named colours, its frame kept (`ostaf.edge_band`, `ostaf.mechanisms.views`)."""

import numpy as np
import pytest
import torch
from PIL import Image

from ostaf.edge_band import EdgeBand
from ostaf.mechanisms import views
from ostaf.preprocess import Preprocessed
from ostaf.view_words import PALETTE
from tests.conftest import tiny_config

BG = np.array([222, 208, 176])
FRAME = (60, 120, 60)
BODY = (30, 60, 200)
RIM = (240, 0, 160)
SHADE = tuple(int(c) for c in (BG * 0.5).round())
OFFSET = (5, 4)  # the shadow's (dx, dy): down and to the right


def disc(centre, radius, size=64) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] + 0.5
    return np.hypot(xx - centre[0], yy - centre[1]) <= radius


def styled(rim=RIM, frame=3, centre=(32, 30)) -> tuple[np.ndarray, np.ndarray]:
    """A blue disc with a 2 px rim, a shadow cast down-right and a frame: (pixels, the disc's mask)."""
    pixels = np.empty((64, 64, 3), np.uint8)
    pixels[:] = BG
    mask = disc(centre, 13)
    shadow = disc((centre[0] + OFFSET[0], centre[1] + OFFSET[1]), 13)
    pixels[shadow & ~mask] = SHADE
    pixels[mask] = BODY
    pixels[mask & ~disc(centre, 11)] = rim  # the outer 2 px ring of the disc
    if frame:
        pixels[:frame], pixels[-frame:], pixels[:, :frame], pixels[:, -frame:] = FRAME, FRAME, FRAME, FRAME
    return pixels, mask


def test_the_background_inside_a_frame_and_the_foreground_without_its_shadow():
    pixels, mask = styled()
    image = Image.fromarray(pixels)
    colour, width = views.plain_background(image)
    assert width == 3 and np.allclose(colour, BG)
    reference = Preprocessed(image, np.ones(mask.shape, bool), [], "style")
    assert np.array_equal(views.foreground(reference), mask)  # neither the frame nor the cast shadow
    # no frame: the border's colour; an object reaching the edge is not a frame
    unframed, _ = styled(frame=0)
    unframed[20:40, :6] = BODY
    colour, width = views.plain_background(Image.fromarray(unframed))
    assert width == 0 and np.allclose(colour, BG)


def test_the_band_reads_the_rim_rings_and_no_deeper():
    pixels, mask = styled()
    band = EdgeBand.of(pixels, mask, frame=3)
    assert len(band.inner) == 2  # the 2 px rim, not the blue body under it
    assert all((ring.colours == RIM).all() for ring in band.inner)  # its pixels, not the body's in its rings
    no_rim, _ = styled(rim=BODY)
    assert EdgeBand.of(no_rim, mask, frame=3).inner == []
    assert not band.allows((230, 20, 150)) and not band.allows(SHADE)  # the rim's and the shadow's colours
    assert band.allows(PALETTE["green"])


def test_a_restyled_outline_carries_the_rim_and_the_shadow_on_the_same_side_and_keeps_the_frame():
    pixels, mask = styled()
    band = EdgeBand.of(pixels, mask, frame=3)
    square = np.zeros((64, 64), bool)
    square[20:41, 22:43] = True  # rows 20–40, columns 22–42
    out = band.restyled(square, PALETTE["red"])
    assert (out[:3] == FRAME).all() and (out[:, -3:] == FRAME).all()  # the frame is the picture's: kept
    # the rim: the square's two outer rings; the fill inside them
    assert (out[30, 22] == RIM).all() and (out[30, 23] == RIM).all() and (out[30, 24] == PALETTE["red"]).all()
    assert (out[20, 30] == RIM).all() and (out[40, 30] == RIM).all() and (out[30, 42] == RIM).all()
    # the shadow: below and to the right of the square, as the reference cast it; none above or to the left
    assert (out[30, 44] == SHADE).all() and (out[30, 46] == SHADE).all() and (out[42, 30] == SHADE).all()
    assert (out[30, 20] == BG).all() and (out[18, 30] == BG).all()
    # the reference's disc is gone, and its band with it: a small outline elsewhere leaves the background there
    small = band.restyled(disc((48, 48), 5), PALETTE["red"])
    assert not (small == BODY).all(-1).any() and (small[17:44, 19:46] == BG).all()
    # an outline whose band reaches the frame leaves the frame as it is
    big = np.zeros((64, 64), bool)
    big[7:57, 7:57] = True
    framed = band.restyled(big, PALETTE["red"])
    edge = np.ones((64, 64), bool)
    edge[3:-3, 3:-3] = False
    assert (framed[edge] == FRAME).all() and (framed[57:60, 30] == SHADE).all()


def test_a_reference_beside_its_frame_lends_the_views_none_of_the_frame():
    """The frame is the picture's: neither the canvas where the object was nor the rings around a new outline
    take its colour, though the object's outer rings reach it."""
    pixels, mask = styled(centre=(18, 30))  # 5 px from the frame: its outer rings cross it
    band = EdgeBand.of(pixels, mask, frame=3)
    out = band.restyled(disc((40, 32), 10), PALETTE["red"])
    assert not (out[3:-3, 3:-3] == FRAME).all(-1).any()
    out[3:-3, 3:-3] = FRAME
    assert (out == FRAME).all()  # and the frame itself is whole


def test_a_style_s_views_are_named_outlines_in_looks_its_band_does_not_use(tmp_path):
    """Under the prompts naming each view's colour, texture and outline; the rim's red is skipped for the fill."""
    from ostaf.train import prepare

    pixels, mask = styled(rim=(210, 40, 40), centre=(18, 30))  # a red rim: a red fill would hide it; near its frame
    path = tmp_path / "styled.png"
    Image.fromarray(pixels).save(path)
    config = tiny_config(path, tmp_path / "s", attribute="style", class_name="blue plain circle", views=3)
    setup = prepare(config)
    made = setup.mechanism(views.CaptionedViews).views
    assert made.words == ["green plain circle", "blue striped square", "yellow dotted triangle"]
    assert made.prompts == [
        "a green plain circle in the style of *s",
        "a blue striped square in the style of *s",
        "a yellow dotted triangle in the style of *s",
    ]
    band = EdgeBand.of(pixels, mask, frame=3)
    square = views.of_its_area(mask, "square", "test")
    assert abs(int(square.sum()) - int(mask.sum())) < 0.1 * mask.sum()  # the object's own area
    fill = np.empty((64, 64, 3), np.uint8)
    fill[:] = PALETTE["blue"]
    fill[np.indices((64, 64))[0] % 8 >= 4] = 250  # white stripes, 4 px of every 8 rows
    fill_view = {"colour": "blue", "texture": "striped", "shape": "square"}
    made_view = views.make_view("style", Image.fromarray(pixels), mask, fill_view, False, band=band)
    assert np.array_equal(np.asarray(made_view), band.restyled(square, fill))
    from ostaf.models import native_resolution
    from ostaf.preprocess import sample_recipes
    from ostaf.training_setup import encode_reference

    recipes = sample_recipes(made_view.size, "style", native_resolution(setup.pipe), 1, 42)
    mean, _ = encode_reference(setup.pipe, Preprocessed(made_view, mask, recipes, "style"))
    assert torch.allclose(made.mean[1:2], mean, atol=1e-6)  # the view trained is this one: its band knows the frame
    assert (np.asarray(made_view)[square & (np.indices((64, 64))[0] % 8 >= 4)] != PALETTE["blue"]).any(-1).all()


def test_a_style_view_without_its_band_is_refused():
    pixels, mask = styled()
    with pytest.raises(ValueError, match="edge band"):
        views.make_view("style", Image.fromarray(pixels), mask, {"colour": "red", "shape": "star"}, False)


def test_rings_count_from_the_object_s_edge_not_the_image_s_and_face_outwards():
    """An object touching the image's top edge: the image's border is not an edge (its top row is 5 px deep,
    to the sides); each ring pixel's direction is the outward normal of the edge point nearest to it."""
    from ostaf.edge_band import _rings

    mask = np.zeros((20, 20), bool)
    mask[0:10, 5:15] = True
    ring_in, angle_in = _rings(mask, inside=True)
    assert ring_in[0, 9] == 5 and ring_in[9, 9] == 1 and ring_in[5, 11] == 4
    assert angle_in[9, 9] == pytest.approx(np.pi / 2, abs=0.1)  # the bottom edge faces down (rows grow down)
    assert angle_in[5, 14] == pytest.approx(0, abs=0.1)  # the right edge faces right
    ring_out, angle_out = _rings(mask, inside=False)
    assert ring_out[12, 9] == 3 and ring_out[5, 9] == 0
    assert angle_out[11, 16] == pytest.approx(np.pi / 4, abs=0.25)  # beyond the bottom-right corner: diagonal


def test_a_ring_answers_each_direction_with_its_circularly_nearest_pixel():
    from ostaf.edge_band import Ring

    colours = np.array([[1, 1, 1], [2, 2, 2], [3, 3, 3]], np.uint8)
    ring = Ring(np.array([-3.0, 0.0, 3.0]), colours)
    got = ring.facing(np.array([-2.9, 0.2, 2.0, 3.2, -3.2, 1.5, 3.14]))[:, 0]
    # 3.2 is 0.08 past -3 + 2π and 0.2 past 3; -3.2 is 0.08 short of 3 - 2π; 1.5 is halfway: the first one
    assert got.tolist() == [1, 2, 3, 1, 3, 2, 3]


def test_the_band_reads_every_outer_ring_and_a_rim_three_rings_deep():
    pixels, mask = styled()
    assert len(EdgeBand.of(pixels, mask, frame=3).outer) == 8  # 1/8 of 64 px
    thick = pixels.copy()
    thick[mask & ~disc((32, 30), 10)] = RIM  # a 3 px rim
    assert len(EdgeBand.of(thick, mask, frame=3).inner) == 3


def test_a_stray_pixel_beside_the_object_is_not_a_colour_of_the_band():
    pixels, mask = styled()
    pixels[30, 16] = PALETTE["green"]  # one pixel, 3 px left of the disc: under 5 % of its outer rings
    band = EdgeBand.of(pixels, mask, frame=3)
    assert band.allows(PALETTE["green"])


def test_a_rim_around_a_textured_body_is_read_against_both_of_its_colours():
    pixels, mask = styled()
    striped = pixels.copy()
    stripes = disc((32, 30), 11) & (np.indices((64, 64))[0] % 4 < 2)
    striped[stripes] = (250, 250, 250)
    band = EdgeBand.of(striped, mask, frame=3)
    assert len(band.inner) == 2 and all((ring.colours == RIM).all() for ring in band.inner)


def test_inside_the_frame_on_a_wide_image():
    from ostaf.edge_band import inside_frame as _inside

    inside = _inside((10, 20), 2)
    assert inside.sum() == 6 * 16 and inside[2:8, 2:18].all()


def test_the_edge_region_is_the_rim_the_shadow_and_the_frame_not_the_inside_nor_the_background_beyond():
    """`--mask-region edge`: what a style draws — not the body past its rim, not the plain background away from
    the object (the edge's own outer ring aside)."""
    from scipy.ndimage import distance_transform_edt

    from ostaf.edge_band import inside_frame

    pixels, mask = styled()
    region = EdgeBand.of(pixels, mask, frame=3).region(pixels, mask)
    for drawn in ((pixels == RIM).all(-1), (pixels == SHADE).all(-1), ~inside_frame(mask.shape, 3)):
        assert drawn.any() and region[drawn].all()
    assert not region[disc((32, 30), 10.5)].any()  # the body inside the 2 px rim
    away = (distance_transform_edt(~mask) > 1.5) & (pixels == BG).all(-1)
    assert away.sum() > 1000 and not region[away].any()
    no_rim, _ = styled(rim=BODY, frame=0)  # no rim, no frame: the edge's own ring inside, the shadow outside
    bare = EdgeBand.of(no_rim, mask).region(no_rim, mask)
    assert region[mask].sum() > bare[mask].sum() > 0 and not bare[disc((32, 30), 11.5)].any()
    assert not bare[~inside_frame(mask.shape, 3) & (no_rim == BG).all(-1)].any()


def test_the_edge_loss_counts_the_band_only_and_only_from_its_start_step(tmp_path):
    """The masked loss on `--mask-region edge` averages the band's latent cells (the frame's, not the body's), and
    before `--masked-loss-start` the run is the plain run, bit for bit."""
    from ostaf.checkpoint import load_checkpoint
    from ostaf.mechanisms.masked_loss import MaskedLoss, masked_mse
    from ostaf.train import prepare, sample_batch, train

    pixels, mask = styled()
    path = tmp_path / "styled.png"
    Image.fromarray(pixels).save(path)
    edge = dict(attribute="style", class_name="blue plain circle", masked_loss=True, mask_region="edge")
    setup = prepare(tiny_config(path, tmp_path / "e", **edge, mask_dilation=0, masked_loss_start=2))
    masked = setup.mechanism(MaskedLoss)
    cells = masked.masks[0, 0]
    h, w = cells.shape
    cell_y, cell_x = 64 // h, 64 // w
    body = disc((32, 30), 10.5)
    for y in range(h):
        for x in range(w):
            if body[y * cell_y : (y + 1) * cell_y, x * cell_x : (x + 1) * cell_x].all():
                assert cells[y, x] == 0  # the body past the rim is not learned
    assert (cells[0] == 1).all() and (cells[:, -1] == 1).all()  # the frame is
    batch = sample_batch(setup, torch.Generator().manual_seed(0))
    pred = torch.randn(batch.latents.shape, generator=torch.Generator().manual_seed(1))
    target = torch.zeros_like(pred)
    masked.enter_step(setup, 1)
    assert masked.reduce(pred, target, None, batch) is None  # before its start: the whole picture's mean
    masked.enter_step(setup, 2)
    torch.testing.assert_close(
        masked.reduce(pred, target, None, batch), masked_mse(pred, target, masked.masks[batch.pick])
    )

    def trained(name: str, **options) -> dict:
        style = dict(attribute="style", class_name="blue plain circle", steps=2)
        return load_checkpoint(
            train(tiny_config(path, tmp_path / name, **(style | options)), progress=False).out
        ).tensors

    plain = trained("plain")
    late, early = trained("late", **edge, masked_loss_start=2), trained("early", **edge)  # 2 steps: 0 and 1
    assert all(torch.equal(plain[k], late[k]) for k in plain)
    assert any(not torch.equal(plain[k], early[k]) for k in plain)


def test_the_edge_loss_on_a_picture_without_a_foreground_says_how_to_give_one(tmp_path):
    from ostaf.errors import OstafError
    from ostaf.train import prepare

    path = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    config = tiny_config(path, tmp_path / "n", attribute="style", masked_loss=True, mask_region="edge")
    with pytest.raises(OstafError, match="--mask-region edge needs the reference's foreground.*segment it"):
        prepare(config)
    assert not (tmp_path / "n").exists() or not any((tmp_path / "n").iterdir())  # nothing half-written
