"""Captioned views (`--views`): a shape in named colours, an appearance cut to named primitives, each view under
its own prompt."""

import numpy as np
import pytest
import torch
from PIL import Image

from ostaf.errors import OstafError
from ostaf.mechanisms import views
from ostaf.preprocess import Preprocessed, sample_recipes
from ostaf.train import denoising_loss, make_optimizer, mechanism_frames, optimizer_step, prepare, sample_batch
from ostaf.view_words import PALETTE, PRIMITIVES, TEXTURES, view_fills
from ostaf.world.generator import BACKGROUND, Factors, render
from tests.conftest import tiny_config


@pytest.fixture
def star(tmp_path):
    """A world star (red, striped, flat) on the world's plain background, and its exact silhouette."""
    world = render(Factors("star", "red", "striped", "flat", 0.5, 0.5, 0.3))
    path = tmp_path / "star.png"
    Image.fromarray(world.image).save(path)
    return path, world.mask


def shape_config(path, out, **overrides):
    return tiny_config(path, out, attribute="shape", class_name="red striped object", grad_accum=1, **overrides)


def step_loss(setup) -> float:
    return optimizer_step(setup, make_optimizer(setup), torch.amp.GradScaler("cuda", enabled=False), torch.Generator())


def test_the_foreground_is_the_mask_or_what_differs_from_a_plain_border(star):
    path, silhouette = star
    image = Image.open(path).convert("RGB")
    unsegmented = Preprocessed(image, np.ones(silhouette.shape, bool), [], "shape")
    assert np.array_equal(views.foreground(unsegmented), silhouette)  # the world's object on its background
    given = np.zeros_like(silhouette)
    given[4:9, 4:9] = True
    assert np.array_equal(views.foreground(Preprocessed(image, given, [], "shape")), given)  # a mask wins
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(OstafError, match="segment it"):
        views.foreground(Preprocessed(noise, np.ones((64, 64), bool), [], "shape"))


def test_each_view_is_the_silhouette_in_its_colour_under_a_prompt_naming_it(star, tmp_path):
    path, silhouette = star
    setup = prepare(shape_config(path, tmp_path / "v", views=3, view_class="{colour} plain object"))
    made = setup.mechanism(views.CaptionedViews).views
    assert made.words == ["red", "green", "blue"]
    assert made.prompts == [f"a {c} plain object in the shape of *m" for c in ("red", "green", "blue")]
    pixels = np.asarray(Image.open(path).convert("RGB"))
    blue = views.recolour(Image.open(path), silhouette, PALETTE["blue"])
    expected = pixels.copy()
    expected[silhouette] = PALETTE["blue"]
    assert np.array_equal(np.asarray(blue), expected)
    assert (expected[~silhouette] == BACKGROUND).all()  # outside the silhouette nothing changed
    # the third view's latent is the VAE's encoding of exactly that image
    from ostaf.models import native_resolution
    from ostaf.training_setup import encode_reference

    size = native_resolution(setup.pipe)
    reference = Preprocessed(blue, silhouette, sample_recipes(blue.size, "shape", size, 1, 42), "shape")
    mean, _ = encode_reference(setup.pipe, reference)
    assert torch.allclose(made.mean[2:3], mean.to(made.mean.device), atol=1e-6)


def test_the_views_loss_enters_every_step_at_its_weight(star, tmp_path):
    """The step's loss is the reference's plus weight × the views' (exactly nothing with the weight at 0)."""
    path, _ = star
    off = step_loss(prepare(shape_config(path, tmp_path / "off")))
    losses = {
        w: step_loss(prepare(shape_config(path, tmp_path / f"w{w}", views=2, view_loss_weight=w)))
        for w in (0.0, 1.0, 2.5)
    }
    assert losses[0.0] == pytest.approx(off, rel=1e-6)
    term = losses[1.0] - losses[0.0]
    assert term > 0 and losses[2.5] - losses[0.0] == pytest.approx(2.5 * term, rel=1e-4)


def test_each_drawn_view_is_scored_under_its_own_prompt_with_the_live_token(star, tmp_path):
    """`views_loss` equals the MSE recomputed here from its draws with the drawn view's prompt, not another's;
    and the placeholder gets a gradient from it (the views teach the token, not only the weights)."""
    path, _ = star
    setup = prepare(shape_config(path, tmp_path / "own", views=2, trainable="token"))
    mechanism = setup.mechanism(views.CaptionedViews)
    made, ids = mechanism.views, mechanism.input_ids

    def loss_under(prompt: str, generator: torch.Generator):
        pick = torch.randint(0, 2, (1,), generator=generator)
        eps = torch.randn((1, *made.mean.shape[1:]), generator=generator)
        noise = torch.randn((1, *made.mean.shape[1:]), generator=generator)
        t = torch.randint(0, 1000, (1,), generator=generator)
        latents = (made.mean[pick] + made.std[pick] * eps) * setup.pipe.vae.config.scaling_factor
        states = setup.prompts.encode(setup.prompts.ids([prompt])).states
        noisy = setup.noise_scheduler.add_noise(latents, noise, t)
        pred = setup.unet(noisy, t, encoder_hidden_states=states).sample
        return int(pick), torch.nn.functional.mse_loss(pred, noise)

    with torch.no_grad():
        for seed in range(6):  # both views get drawn
            got = views.views_loss(setup, made, ids, torch.Generator().manual_seed(seed))
            pick, first = loss_under(made.prompts[0], torch.Generator().manual_seed(seed))
            _, second = loss_under(made.prompts[1], torch.Generator().manual_seed(seed))
            mine, other = (first, second) if pick == 0 else (second, first)
            assert abs(float(got) - float(mine)) < 1e-6 < abs(float(got) - float(other))
    setup.token.zero_grad()
    views.views_loss(setup, made, ids, torch.Generator().manual_seed(0)).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in setup.token.parameters())


def test_textured_views_draw_what_the_world_means_by_each_texture_word(star, tmp_path):
    """`--view-textures`: each view is the silhouette in its colour and texture — pixel for pixel the world's own
    render of that shape in that look (so "a blue dotted object" is trained on what the model calls dotted) —
    under a prompt naming both."""
    path, silhouette = star
    setup = prepare(shape_config(path, tmp_path / "t", views=4, view_textures=True))
    made = setup.mechanism(views.CaptionedViews).views
    assert made.words == ["red plain", "green striped", "blue dotted", "yellow checkered"]
    assert made.prompts == [f"a {w} object in the shape of *m" for w in made.words]
    image = Image.open(path)
    for colour, texture in (("green", "dotted"), ("blue", "checkered"), ("yellow", "striped"), ("cyan", "solid")):
        view = views.recolour(image, silhouette, PALETTE[colour], {"solid": "plain"}.get(texture, texture))
        world = render(Factors("star", colour, texture, "flat", 0.5, 0.5, 0.3))
        assert np.array_equal(np.asarray(view), world.image), (colour, texture)
    assert made.mean.shape[0] == 4 and step_loss(setup) > 0
    # the second view's latent is the VAE's encoding of the world's green striped star, not a plain green one
    from ostaf.models import native_resolution
    from ostaf.training_setup import encode_reference

    size = native_resolution(setup.pipe)
    for texture, same in (("striped", True), ("solid", False)):
        look = Image.fromarray(render(Factors("star", "green", texture, "flat", 0.5, 0.5, 0.3)).image)
        recipes = sample_recipes(look.size, "shape", size, 1, 42)
        mean, _ = encode_reference(setup.pipe, Preprocessed(look, silhouette, recipes, "shape"))
        assert torch.allclose(made.mean[1:2], mean.to(made.mean.device), atol=1e-6) == same, texture
    # by hand, independent of any shared texture code: at 64 px a stripe is 4 white rows in every 8
    striped = np.asarray(views.recolour(image, silhouette, PALETTE["green"], "striped"))
    rows = np.nonzero(silhouette)[0]
    white = (rows % 8) >= 4
    assert (striped[silhouette][white] == (250, 250, 250)).all() and (
        striped[silhouette][~white] == PALETTE["green"]
    ).all()


def test_textured_views_give_every_colour_before_a_repeat_and_no_pair_twice():
    fills = view_fills("shape", len(PALETTE) * len(TEXTURES), textures=True)
    pairs = [(f["colour"], f["texture"]) for f in fills]
    assert len(set(pairs)) == len(pairs) == 32
    assert [c for c, _ in pairs[: len(PALETTE)]] == list(PALETTE)
    assert {t for _, t in pairs[:4]} == set(TEXTURES)
    assert view_fills("shape", 3) == [{"colour": c} for c in ("red", "green", "blue")]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(attribute="style", views=11), "style has 10 .* use ≤ 10"),
        (dict(attribute="style", views=2, view_class="{colour} {texture} vase"), "has no {shape}"),
        (dict(attribute="style", views=2, view_zoom=True), "style's views keep the reference's style"),
        (dict(views=len(PALETTE) + 1), "use ≤ 8"),
        (dict(attribute="appearance", views=len(PRIMITIVES) + 1), "use ≤ 10"),
        (dict(views=2, view_class="object"), "has no {colour}"),
        (dict(attribute="appearance", views=2, view_class="{colour} vase"), "has no {shape}"),
        (dict(views=-1), "views must be ≥ 0"),
        (dict(view_textures=True), "add --views N"),
        (dict(attribute="appearance", views=2, view_textures=True), "drop --view-textures"),
        (dict(views=33, view_textures=True), "use ≤ 32"),
        (dict(views=2, view_textures=True, view_class="{colour} vase"), "has no {texture}"),
        (dict(views=2, view_class="{colour} {texture} vase"), "add --view-textures"),
        (dict(view_unnamed=True), "--view-unnamed .* add --views N"),
        (dict(attribute="appearance", views=2, view_unnamed=True), "drop --view-unnamed"),
        (dict(view_zoom=True), "--view-zoom .* add --views N"),
        (dict(attribute="appearance", views=2, view_zoom=True), "drop --view-zoom"),
        (dict(attribute="appearance", view_extend=True), "--view-extend .* add --views N"),
        (dict(views=2, view_extend=True), "shape's views have none"),
    ],
)
def test_views_it_cannot_follow_are_one_error_before_any_work(reference, tmp_path, overrides, message):
    with pytest.raises(OstafError, match=message):
        tiny_config(reference, tmp_path / "x", **({"attribute": "shape"} | overrides))


def test_an_appearance_view_is_the_surface_cut_to_a_primitive_inside_the_object(tmp_path):
    """The deepest disc of the silhouette holds the primitive; inside it every pixel is the reference's own,
    outside it the plain background; the prompt names the primitive."""
    world = render(Factors("circle", "blue", "striped", "flat", 0.5, 0.5, 0.35))
    image = Image.fromarray(world.image)
    centre, radius = views.largest_disc(world.mask)
    assert abs(centre[0] - 32) <= 1.5 and abs(centre[1] - 32) <= 1.5  # the circle's own centre
    assert abs(radius - 0.35 * 64) <= 1.5  # and its radius
    for shape in PRIMITIVES:
        view = np.asarray(views.cut_to(image, world.mask, shape))
        keep = views.primitive(shape, world.mask.shape, centre, radius) & world.mask
        assert keep.sum() > 0.3 * np.pi * radius**2  # a primitive of the disc's size, not a sliver
        assert np.array_equal(view[keep], world.image[keep])
        assert (view[~keep] == BACKGROUND).all()
    for mode in ("L", "RGBA"):  # a grey or transparent reference: still an RGB view, its pixels converted
        other = views.cut_to(image.convert(mode), world.mask, "circle")
        expected = np.asarray(views.cut_to(image.convert(mode).convert("RGB"), world.mask, "circle"))
        assert other.mode == "RGB" and np.array_equal(np.asarray(other), expected)
    square = views.primitive("square", (64, 64), (32, 32), 20)
    assert square.sum() == pytest.approx((2 * 0.7071 * 20) ** 2, rel=0.1)
    assert not views.primitive("diamond", (64, 64), (32, 32), 20)[32, 32 + 21]  # inside its disc


def stripes_and_checks(height: int = 64, width: int = 64) -> dict[str, np.ndarray]:
    """Two surfaces with exact integer periods, as functions of the pixel: stripes across rows (period 6) and
    checks of 3 px cells (period 6 both ways), red on white."""
    yy, xx = np.mgrid[:height, :width]
    second = {"stripes": (yy % 6) >= 3, "checks": ((yy // 3) + (xx // 3)) % 2 == 1}
    out = {}
    for name, where in second.items():
        pixels = np.empty((height, width, 3), np.uint8)
        pixels[:] = (200, 30, 30)
        pixels[where] = (250, 250, 250)
        out[name] = pixels
    return out


def on_plain_background(surface: np.ndarray, mask: np.ndarray, edge: bool = False) -> np.ndarray:
    """The surface where `mask` is, the world's background elsewhere; `edge`: the object's outermost pixels
    blended half into the background, as a rendered or cut-out object's are."""
    image = np.empty_like(surface)
    image[:] = BACKGROUND
    image[mask] = surface[mask]
    if edge:
        from scipy.ndimage import binary_erosion

        ring = mask & ~binary_erosion(mask)
        image[ring] = (surface[ring].astype(int) + np.array(BACKGROUND)) // 2
    return image


def test_the_surface_repeats_by_its_shortest_shifts_along_and_across_its_pattern():
    """Scored inside the object only: the background around it, the same at every shift, would favour long
    shifts that move the pattern onto it."""
    mask = views.primitive("circle", (64, 64), (30, 34), 18)
    surfaces = stripes_and_checks()
    stripes, checks = (on_plain_background(surfaces[n], mask) for n in ("stripes", "checks"))
    assert views.surface_shifts(stripes, mask) == [(0, 1), (6, 0)]  # along the stripes, their period
    assert views.surface_shifts(checks, mask) == [(-3, 3), (3, 3)]  # the checks' diagonal lattice
    flat = on_plain_background(np.full((64, 64, 3), 90, np.uint8), mask)
    assert views.surface_shifts(flat, mask) == [(0, 1), (1, 0)]  # a flat colour: two unit steps


def test_an_extended_view_continues_the_surface_over_a_whole_primitive_of_the_objects_area():
    """`--view-extend`: inside the object the reference's pixels, beyond it the pattern continued — pixel for
    pixel what the pattern's own formula gives there — on a primitive of the object's area, at its centroid."""
    mask = np.zeros((64, 64), bool)
    mask[18:54, 20:36] = True  # a tall bar (36 × 16): every primitive of its area reaches past it
    for name, surface in stripes_and_checks().items():
        image = on_plain_background(surface, mask, edge=True)  # the blended edge is not the surface: not copied
        for shape in PRIMITIVES:
            view = np.asarray(views.extended_to(Image.fromarray(image), mask, shape))
            target = (view != BACKGROUND).any(-1)
            assert target.sum() == pytest.approx(mask.sum(), rel=0.12), (name, shape)  # the object's area
            radius = np.sqrt(mask.sum() / views.unit_area(shape))
            assert np.array_equal(target, views.primitive(shape, mask.shape, (28.0, 36.0), radius))  # at its centroid
            beyond = target & ~mask
            assert beyond.sum() > 20, (name, shape)  # the primitive reaches past the circle
            assert np.array_equal(view[target], surface[target]), (name, shape)


def test_extended_appearance_views_are_the_ones_trained(reference, tmp_path, monkeypatch):
    made = []
    monkeypatch.setattr(
        views, "extended_to", lambda image, mask, shape, surface: made.append(shape) or views.cut_to(image, mask, shape)
    )
    prepare(tiny_config(reference, tmp_path / "a", views=2, grad_accum=1, view_extend=True))
    assert made == ["circle", "square"]


def test_appearance_views_train_under_prompts_naming_their_primitives(reference, tmp_path):
    setup = prepare(tiny_config(reference, tmp_path / "a", views=2, grad_accum=1))
    made = setup.mechanism(views.CaptionedViews).views
    assert made.words == ["circle", "square"]
    assert made.prompts == ["a circle in the appearance of *a", "a square in the appearance of *a"]
    assert made.mean.shape[0] == 2
    assert step_loss(setup) > 0


def test_the_views_term_is_its_weight_times_the_views_loss(star, tmp_path):
    """The step's views term is `--view-loss-weight` × `views_loss` on the same draws (a weight that divided the
    loss would still be linear in the weight: the step test above cannot tell)."""
    path, _ = star
    setup = prepare(shape_config(path, tmp_path / "w", views=2, view_loss_weight=2.5))
    mechanism = setup.mechanism(views.CaptionedViews)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(3)
        batch = sample_batch(setup, generator)
        term = denoising_loss(setup, *batch, frames=mechanism_frames(setup, batch, generator)).frames
        generator = torch.Generator().manual_seed(3)
        sample_batch(setup, generator)  # the same draws again: the views' come after the batch's
        alone = views.views_loss(setup, mechanism.views, mechanism.input_ids, generator)
    assert abs(float(alone) - 1) > 0.01  # a loss of 1 would hide weight / loss
    assert float(term) == pytest.approx(2.5 * float(alone), rel=1e-5)


def pixel_centres(size: tuple[int, int], centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel centre's offset (dx, dy) from `centre` (x, y), in px: pixel (row, col) is at (col + ½, row + ½)."""
    rows, cols = np.indices(size)
    return cols + 0.5 - centre[0], rows + 0.5 - centre[1]


def test_each_primitive_is_its_outline_pixel_for_pixel():
    """Every primitive against its definition written here from the disc (radius 4 px, off-centre on a 14 × 20
    grid, centred on a pixel so that outline pixels fall exactly on the outline and count as inside): the
    circle, the square inscribed in it, the diamond through its four extremes, and the triangle whose three
    vertices lie on it, apex up (a point is inside when it is left of no edge, by cross products)."""
    size, centre, radius = (14, 20), (9.5, 6.5), 4.0
    dx, dy = pixel_centres(size, centre)
    inscribed = radius / np.sqrt(2)
    expected = {
        "circle": dx**2 + dy**2 <= radius**2,
        "square": (np.abs(dx) <= inscribed) & (np.abs(dy) <= inscribed),
        "diamond": np.abs(dx) + np.abs(dy) <= radius,
    }
    angles = np.radians([-90.0, 30.0, 150.0])  # y grows downwards: -90° is the apex, up
    vertices = [(radius * np.cos(a), radius * np.sin(a)) for a in angles]
    inside = np.ones(size, bool)
    for (x0, y0), (x1, y1) in zip(vertices, vertices[1:] + vertices[:1], strict=True):
        inside &= (x1 - x0) * (dy - y0) - (y1 - y0) * (dx - x0) >= -1e-6  # clockwise on screen: inside is ≥ 0
    expected["triangle"] = inside
    # the outlines `--view-extend` draws whole: written from the same unit disc (x right, y down, radius 1)
    x, y = dx / radius, dy / radius
    r = np.hypot(x, y)
    expected["ring"] = (r <= 1) & (r >= 0.55)
    expected["cross"] = ((np.abs(x) <= 0.3) & (np.abs(y) <= 0.95)) | ((np.abs(x) <= 0.95) & (np.abs(y) <= 0.3))
    expected["crescent"] = (r <= 1) & ((x - 0.45) ** 2 + (y + 0.1) ** 2 >= 0.64)
    hexagon = np.ones(size, bool)
    corners = [(np.cos(a), np.sin(a)) for a in np.radians(np.arange(0, 360, 60))]  # clockwise on screen
    for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1], strict=True):
        hexagon &= (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0) >= -1e-6
    expected["hexagon"] = hexagon
    up = np.arctan2(y, x) + np.pi / 2  # 0 at the top point
    expected["star"] = r <= 0.45 + 0.55 * ((1 + np.cos(5 * up)) / 2) ** 3
    hx, hy = 1.15 * x, 0.25 - 1.15 * y
    expected["heart"] = (hx**2 + hy**2 - 0.6) ** 3 <= hx**2 * hy**3
    assert set(expected) == set(PRIMITIVES)
    areas = {
        "circle": np.pi,
        "square": 2.0,
        "diamond": 2.0,
        "triangle": 3 * np.sqrt(3) / 4,
        "hexagon": 3 * np.sqrt(3) / 2,
    }
    for name, area in areas.items():  # what an extended view's radius is computed from
        assert views.unit_area(name) == pytest.approx(area, rel=5e-3), name
    for name, mask in expected.items():
        got = views.primitive(name, size, centre, radius)
        assert np.array_equal(got, mask), name
    assert expected["circle"][6, 13] and expected["diamond"][8, 11]  # (4, 0) and (2, 2): on the outlines
    assert expected["triangle"][2, 9] and expected["triangle"][8, 9]  # the apex and the base's midpoint


def test_the_deepest_disc_is_found_where_the_object_touches_the_image_border():
    """`largest_disc` by hand: a 7-px-tall bar along the top border holds a disc of radius 3.5 centred half-way
    down it (outside the image counts as background), the leftmost of its deepest points; a one-pixel line along
    the bottom or right border holds a half-pixel disc in that line."""
    bar = np.zeros((12, 20), bool)
    bar[0:7, 3:16] = True
    assert views.largest_disc(bar) == ((6.5, 3.5), 3.5)
    bottom = np.zeros((12, 20), bool)
    bottom[-1, 4:] = True
    assert views.largest_disc(bottom) == ((4.5, 11.5), 0.5)
    right = np.zeros((12, 20), bool)
    right[2:, -1] = True
    assert views.largest_disc(right) == ((19.5, 2.5), 0.5)


def test_a_surface_too_small_to_cut_is_one_error_and_a_disc_of_five_pixels_is_cut():
    image = Image.new("RGB", (20, 20), BACKGROUND)
    five, four = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    five[5:10, 2:18] = True  # a disc of radius 2.5 px fits
    four[5:9, 2:18] = True  # radius 1.5 px: below the 2 px the cut needs
    assert views.largest_disc(five)[1] == 2.5 and views.largest_disc(four)[1] == 1.5
    assert np.asarray(views.cut_to(image, five, "circle")).shape == (20, 20, 3)
    with pytest.raises(OstafError, match="holds no disc wider than 3 px"):
        views.cut_to(image, four, "circle")


def test_unnamed_views_are_the_same_images_again_under_the_prompt_without_their_words(star, tmp_path):
    """`--view-unnamed`: views N + i is view i's latent again, under 'an object in the shape of *m' (the class
    without its colour and texture); a class of the user's keeps its noun."""
    path, _ = star
    named = prepare(shape_config(path, tmp_path / "n", views=3, view_textures=True)).mechanism(views.CaptionedViews)
    setup = prepare(shape_config(path, tmp_path / "u", views=3, view_textures=True, view_unnamed=True))
    mechanism = setup.mechanism(views.CaptionedViews)
    made = mechanism.views
    assert made.prompts == [*named.views.prompts, *["an object in the shape of *m"] * 3]
    assert made.words == [*named.views.words, "", "", ""]
    assert torch.equal(made.mean, torch.cat([named.views.mean, named.views.mean]))
    assert torch.equal(made.std, torch.cat([named.views.std, named.views.std]))
    assert mechanism.input_ids.shape[1] == 6  # every prompt tokenised, the unnamed ones too
    vase = tiny_config(path, tmp_path / "v", attribute="shape", views=2, view_class="{colour} vase", view_unnamed=True)
    assert prepare(vase).mechanism(views.CaptionedViews).views.prompts[2:] == ["a vase in the shape of *m"] * 2


def test_the_border_colour_is_the_median_of_the_one_pixel_frame():
    """The median, per channel, of the four one-pixel edges (corners on both of their edges) of a random image:
    any other row or column read instead moves it."""
    image = np.random.default_rng(3).integers(0, 256, (9, 12, 3), dtype=np.uint8)
    height, width = image.shape[:2]
    coords = [(r, c) for r in (0, height - 1) for c in range(width)] + [
        (r, c) for c in (0, width - 1) for r in range(height)
    ]
    expected = np.median(np.array([image[r, c] for r, c in coords], dtype=np.float64), axis=0)
    assert np.array_equal(views.border_colour(Image.fromarray(image)), expected)


def test_composing_a_views_shape_with_a_look_only_after_it_says_where_to_write_the_look(star, tmp_path, caplog):
    """The views named their look before the class, so a look written only in its phrase comes out mixed (world v3:
    0.42 against 0.98): generation says so, once per prompt, and stays quiet for the form that composes, for a
    shape without views and for one checkpoint."""
    from types import SimpleNamespace

    from ostaf.config import GenerateConfig
    from ostaf.generate import composition_hint, generate
    from ostaf.train import train

    path, _ = star
    shape = train(shape_config(path, tmp_path / "shape", steps=1, views=2), progress=False).out
    look = train(tiny_config(path, tmp_path / "look", steps=1, trainable="token"), progress=False).out
    phrase, both = (
        "an object in the shape of *m in the appearance of *a",
        "a *a object in the shape of *m in the appearance of *a",
    )
    with caplog.at_level("WARNING", logger="ostaf.generate"):
        generate(
            GenerateConfig(
                ckpt=[str(shape), str(look)],
                prompt=[phrase, both],
                lam=[1.0],
                seeds=[0],
                num_steps=1,
                device="cpu",
                out=str(tmp_path / "g"),
            ),
            progress=False,
        )
    hints = [r.getMessage() for r in caplog.records if "named their look before the class" in r.getMessage()]
    assert len(hints) == 1 and hints[0].startswith(repr(phrase)) and "'a *a object in the shape of *m" in hints[0]
    card = {"attribute": "shape", "train": {"views": 0}}
    plain = [SimpleNamespace(token="*m", card=card), SimpleNamespace(token="*a", card={"attribute": "appearance"})]
    assert composition_hint(plain, phrase) is None  # a shape trained without views: nothing to say
    assert composition_hint(plain[:1], "a vase in the shape of *m") is None


def test_a_zoomed_silhouette_fills_the_frame_centred_with_its_aspect_and_notch_kept():
    """`zoomed`: a 6 × 4 px block with a one-pixel notch, in a corner of a 64 px frame, becomes 51 × 34 px (0.8 of
    the frame, scale 51.2 / 6) in the middle, the notch 8.5 px wide where it was; a silhouette already that large
    is kept."""
    mask = np.zeros((64, 64), bool)
    mask[2:6, 3:9] = True  # 4 rows × 6 columns
    mask[2, 5] = False  # a notch in the top edge, the third column
    big = views.zoomed(mask)
    rows, cols = np.nonzero(big)
    assert (cols.max() - cols.min() + 1, rows.max() - rows.min() + 1) == (51, 34)
    assert abs((cols.min() + cols.max()) / 2 - 31.5) <= 0.5 and abs((rows.min() + rows.max()) / 2 - 31.5) <= 0.5
    scale = 0.8 * 64 / 6
    top, left = rows.min(), cols.min()
    notch = ~big[top, left : left + 51]  # the top row's gap: the notch's column, enlarged
    assert notch.sum() == pytest.approx(scale, abs=1.5) and abs(np.argmax(notch) - 2 * scale) <= 1.5
    assert big[top + 10, left : left + 51].all()  # below the notch the block is whole
    large = np.zeros((64, 64), bool)
    large[5:60, 10:40] = True
    assert np.array_equal(views.zoomed(large), large)


def test_zoomed_views_are_every_other_view_enlarged_on_the_plain_background(star, tmp_path):
    """`--view-zoom`: views 1, 3, … are the silhouette zoomed on the border's colour and filled with their colour;
    views 0, 2, … and every prompt are as without it."""
    path, silhouette = star
    plain = prepare(shape_config(path, tmp_path / "p", views=4)).mechanism(views.CaptionedViews).views
    made = prepare(shape_config(path, tmp_path / "z", views=4, view_zoom=True)).mechanism(views.CaptionedViews).views
    assert made.prompts == plain.prompts and made.words == plain.words
    assert torch.equal(made.mean[0::2], plain.mean[0::2])
    assert not torch.allclose(made.mean[1], plain.mean[1]) and not torch.allclose(made.mean[3], plain.mean[3])
    image = Image.open(path)
    green = views.make_view("shape", image, silhouette, {"colour": "green"}, zoom=True)
    expected = np.empty((64, 64, 3), np.uint8)
    expected[:] = BACKGROUND
    big = views.zoomed(silhouette)
    expected[big] = PALETTE["green"]
    assert np.array_equal(np.asarray(green), expected) and big.sum() > 1.5 * silhouette.sum()
    from ostaf.models import native_resolution
    from ostaf.training_setup import encode_reference

    setup = prepare(shape_config(path, tmp_path / "e", views=4, view_zoom=True))
    recipes = sample_recipes(green.size, "shape", native_resolution(setup.pipe), 1, 42)
    mean, _ = encode_reference(setup.pipe, Preprocessed(green, silhouette, recipes, "shape"))
    assert torch.allclose(made.mean[1:2], mean.to(made.mean.device), atol=1e-6)


def test_a_recoloured_view_is_rgb_whatever_the_reference_s_mode():
    """A reference with an alpha channel or in grey still gives an RGB view, the mask in the colour, the rest kept."""
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 1] = 120
    mask = np.zeros((8, 8), bool)
    mask[2:5, 3:6] = True
    for image in (Image.fromarray(rgb).convert("RGBA"), Image.fromarray(rgb).convert("L")):
        out = np.asarray(views.recolour(image, mask, (200, 10, 10)))
        assert out.shape == (8, 8, 3)
        assert (out[mask] == (200, 10, 10)).all()
        assert (out[~mask] == np.asarray(image.convert("RGB"))[~mask]).all()
