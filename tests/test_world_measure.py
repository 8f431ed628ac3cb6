"""World v3's continuous evaluators, calibrated on the generator: the same unnamed value matches itself
under other jitter (≥ 95 %), two values of a family do not match (≤ 5 %); each part of a gap is exact."""

from dataclasses import replace

import numpy as np
import pytest

from ostaf.world import unnamed as un
from ostaf.world.evaluate import recover_mask
from ostaf.world.generator import Factors, render, sample_factors, style_fits, with_value
from ostaf.world.measure import (
    APPEARANCE_MATCH,
    SHAPE_MATCH,
    STYLE_MATCH,
    appearance_gap,
    delta_e,
    look_of,
    shape_similarity,
    style_gap,
    style_of,
)

PAIRS = 120  # pairs per family and kind: a rate of 5 % is 6 pairs


def _world(rng: np.random.Generator, attribute: str, value: str):
    """`value` on a random named object (another shape, look, position and size each draw)."""
    while True:
        f = with_value(sample_factors(rng, held_out=None, style="flat"), attribute, value)
        if style_fits(f.colour, f.style):
            return render(f)


def _similarity(attribute: str, a, b) -> float:
    """Higher is closer: the shape IoU, minus the appearance or style gap."""
    if attribute == "shape":
        return shape_similarity(recover_mask(a.image), recover_mask(b.image))
    if attribute == "appearance":
        return -appearance_gap(look_of(a.image, recover_mask(a.image)), look_of(b.image, recover_mask(b.image))).total()
    return -style_gap(style_of(a.image, recover_mask(a.image)), style_of(b.image, recover_mask(b.image))).total()


THRESHOLD = {"shape": SHAPE_MATCH, "appearance": -APPEARANCE_MATCH, "style": -STYLE_MATCH}


@pytest.mark.parametrize("attribute", ["shape", "appearance", "style"])
def test_match_threshold_separates_same_value_from_another(attribute):
    rng = np.random.default_rng(123)
    same, other = [], []
    for i in range(PAIRS):
        value = un.unnamed(attribute, 2 * i)
        a, b = _world(rng, attribute, value), _world(rng, attribute, value)
        c = _world(rng, attribute, un.unnamed(attribute, 2 * i + 1))
        same.append(_similarity(attribute, a, b) >= THRESHOLD[attribute])
        other.append(_similarity(attribute, a, c) >= THRESHOLD[attribute])
    assert np.mean(same) >= 0.95, f"{attribute}: the same value matched {np.mean(same):.1%} of the time"
    assert np.mean(other) <= 0.05, f"{attribute}: two values matched {np.mean(other):.1%} of the time"


def test_novel_values_are_outside_the_seen_pool_and_every_family_is_large():
    assert not un.is_novel(un.unnamed("shape", un.SEEN_POOL - 1)) and un.is_novel(un.unnamed("shape", un.NOVEL_BASE))
    kinds = {un.shape_params(i).kind for i in range(64)}
    assert kinds == {"blob", "polygon", "superellipse", "ellipses"}
    masks = {render(Factors(un.unnamed("shape", i), "red", "solid")).mask.tobytes() for i in range(200)}
    assert len(masks) == 200  # hundreds of distinct silhouettes
    assert {un.look_params(i).texture for i in range(64)} == set(un.TEXTURE_KINDS)


def test_shape_similarity_ignores_position_and_size_only():
    f = Factors(un.unnamed("shape", 5), "red", "solid", cx=0.45, cy=0.55, scale=0.27)
    moved = render(replace(f, cx=0.57, cy=0.42, scale=0.33))
    assert shape_similarity(render(f).mask, moved.mask) > 0.93
    assert shape_similarity(render(f).mask, render(f).mask) == 1.0
    assert shape_similarity(render(f).mask, np.zeros_like(moved.mask)) == 0.0


def test_appearance_gap_recovers_both_colours_and_the_layout():
    value = next(un.unnamed("appearance", i) for i in range(100) if un.look_params(i).texture == "stripes")
    params = un.look_params(un.value_id(value))
    world = render(Factors("square", value, value))
    look = look_of(world.image, world.mask)
    pair = sorted([look.colour, look.second], key=lambda c: delta_e(c, params.colour))
    assert delta_e(pair[0], params.colour) < 1 and delta_e(pair[1], params.second) < 1
    # the same stripes turned by 90° keep both colours but not the layout
    turned = un.LookParams(params.colour, params.second, "stripes", (params.values[0] + np.pi / 2, *params.values[1:]))
    image = world.image.copy()
    yy, xx = np.mgrid[:64, :64] + 0.5
    u = np.cos(turned.values[0]) * xx + np.sin(turned.values[0]) * yy
    stripes = (u / turned.values[1]) % 1.0 < turned.values[2]
    image[world.mask] = np.where(stripes[world.mask, None], params.second, params.colour)
    gap = appearance_gap(look, look_of(image, world.mask))
    assert gap.colour < 1 and gap.second < 1 and gap.texture > 0.2


def test_style_of_recovers_each_part_of_an_unnamed_style():
    value = next(un.unnamed("style", i) for i in range(200) if un.style_params(i).rim and un.style_params(i).shadow)
    params = un.style_params(un.value_id(value))
    world = render(Factors("hexagon", "blue", "solid", value))
    style = style_of(world.image, world.mask)
    assert style.frame is None and style.rim[1] == params.rim[1] and delta_e(style.rim[0], params.rim[0]) < 1
    assert np.abs(style.shadow[0] - np.asarray(params.shadow[:2])).max() <= 0.6
    assert abs(style.shadow[1] - params.shadow[2]) < 0.03
    flat = style_of(render(Factors("hexagon", "blue", "solid")).image, world.mask)
    assert flat.rim is None and flat.shadow is None and flat.frame is None
    assert style_gap(style, flat).parts == 2.0
