"""Attribute World: deterministic generator, exact masks, evaluators exact on generator images."""

import numpy as np
import pytest

from ostaf.world.evaluate import (
    appearance_distance,
    classify_colour,
    classify_shape,
    classify_style,
    classify_texture,
    recover_mask,
    shape_iou,
    style_distance,
    style_features,
)
from ostaf.world.generator import COLOURS, SHAPES, STYLES, TEXTURES, Factors, is_held_out, render, sample
from ostaf.world.pretrain import caption_variant


def test_generator_is_deterministic_and_seeds_differ():
    a, b, c = sample(7), sample(7), sample(8)
    assert np.array_equal(a.image, b.image) and a.factors == b.factors
    assert not np.array_equal(a.image, c.image)


def test_factor_counts_and_captions():
    assert len(SHAPES) >= 8 and len(COLOURS) >= 6 and len(TEXTURES) >= 4 and len(STYLES) >= 4
    assert Factors("star", "red", "striped").caption() == "a red striped star"
    assert Factors("ring", "blue", "solid", "outlined").caption() == "a blue plain ring, outlined style"


def test_pretraining_captions_name_every_style_but_flat_and_the_style_phrasing_names_flat_too():
    styled, flat = Factors("ring", "blue", "solid", "shadowed"), Factors("ring", "blue", "solid")
    for template in range(4):
        assert "shadowed" in caption_variant(styled, template)
    assert [caption_variant(flat, t) for t in range(3)] == [
        "a blue plain ring",
        "a blue plain object in the shape of a ring",
        "a ring in the appearance of a blue plain object",
    ]
    assert caption_variant(flat, 3) == "a blue plain ring in the style of flat" and caption_variant(flat, 4) == ""


def test_held_out_combinations_are_excluded_or_drawn_on_request():
    combos = [(s, c, t, y) for s in SHAPES for c in COLOURS for t in TEXTURES for y in STYLES]
    held = sum(is_held_out(*combo) for combo in combos)
    assert 0 < held < len(combos) // 4
    assert all(any(is_held_out(s, c, t, style) for s, c, t, _ in combos) for style in STYLES)
    for seed in range(40):
        f = sample(seed, style=None).factors
        assert not is_held_out(f.shape, f.colour, f.texture, f.style)
        g = sample(seed, held_out=True, style=None).factors
        assert is_held_out(g.shape, g.colour, g.texture, g.style)
    assert {sample(seed, style=None).factors.style for seed in range(40)} == set(STYLES)


@pytest.mark.parametrize("style", STYLES)
def test_masks_are_exact(style):
    for seed in range(20):
        world = sample(seed, style=style)
        assert np.array_equal(recover_mask(world.image), world.mask)


def test_evaluators_are_exact_on_generator_images():
    for seed in range(200):
        world = sample(seed, held_out=None, style=None)
        mask = recover_mask(world.image)
        assert classify_shape(mask)[0] == world.factors.shape
        assert classify_colour(world.image, mask) == world.factors.colour
        assert classify_texture(world.image, mask) == world.factors.texture
        assert classify_style(world.image, mask) == world.factors.style


@pytest.mark.parametrize("colour", ["black", "yellow", "purple"])
def test_each_style_shows_in_its_own_feature_only_and_styles_are_apart(colour):
    """On rendered images a style's feature is ≥ 2 (twice where it starts to show) and the others are 0,
    whatever the shape, colour and texture; the same style is at distance 0, another one far."""
    for shape in SHAPES:
        images = {s: render(Factors(shape, colour, "dotted", s, 0.45, 0.55, 0.3)).image for s in STYLES}
        for index, style in enumerate(STYLES):
            features = style_features(images[style])
            expected = np.zeros(3, bool)
            if index:
                expected[index - 1] = True
            assert (features[expected] >= 2).all() and (features[~expected] == 0).all(), (shape, style, features)
            assert style_distance(images[style], images[style]) == 0.0
            assert all(style_distance(images[style], images[o]) >= 0.9 for o in STYLES if o != style)


def test_unknown_style_is_refused():
    with pytest.raises(ValueError, match="unknown style"):
        render(Factors("star", "red", "solid", "noisy"))


def test_exact_answers_for_identity_and_difference():
    world = sample(3)
    assert shape_iou(world.image, world.mask) == 1.0
    assert appearance_distance(world.image, world.image) == 0.0
    moved = render(Factors(world.factors.shape, "green", "checkered", cx=0.42, cy=0.58, scale=world.factors.scale))
    assert shape_iou(moved.image, world.mask) > 0.97  # same shape, elsewhere: centring removes the shift
    assert appearance_distance(moved.image, world.image) > 0.3
    other = render(Factors("cross", world.factors.colour, world.factors.texture))
    assert shape_iou(other.image, world.mask) < 0.9 or world.factors.shape == "cross"


def test_pretraining_recipe_runs_and_its_output_loads_as_a_pipeline(tmp_path, monkeypatch):
    import torch

    from ostaf.models import load_pipeline
    from ostaf.world.pretrain import WorldRecipe, pretrain

    recipe = WorldRecipe(dataset_size=8, vae_steps=2, vae_batch=2, diffusion_steps=2, diffusion_batch=2, warmup_steps=1)
    from ostaf.world import pretrain as module

    monkeypatch.setattr(module, "caption_following", lambda pipe: {"held_in": {}, "held_out": {}})  # minutes
    info = pretrain(recipe, tmp_path / "world", progress=False)
    assert info["recipe_hash"] == recipe.hash() and len(info["diffusion_losses_head"]) == 2
    again = pretrain(recipe, tmp_path / "again", progress=False)
    assert again["diffusion_losses_head"] == info["diffusion_losses_head"]  # the recipe is deterministic
    pipe = load_pipeline(str(tmp_path / "world"))
    image = pipe(
        "a red striped star", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images[0]
    assert image.shape == (64, 64, 3)


def test_a_killed_pretraining_resumes_to_the_same_weights(tmp_path):
    """Each stage checkpoints (`--work`); a rerun continues where it stopped and ends bit-equal to one run."""
    import torch

    from ostaf.world.pretrain import WorldRecipe, build_models, dataset_factors, train_diffusion, train_vae

    recipe = WorldRecipe(
        dataset_size=16, vae_steps=4, vae_batch=2, diffusion_steps=6, diffusion_batch=2, warmup_steps=1,
        checkpoint_seconds=0,
    )  # fmt: skip
    whole, _, _ = build_models(recipe)
    losses = train_vae(whole, recipe, progress=False)
    stopped, _, _ = build_models(recipe)
    train_vae(stopped, recipe, progress=False, steps=2, checkpoint=tmp_path / "vae.pt")  # killed after 2 steps
    resumed, _, _ = build_models(recipe)
    assert train_vae(resumed, recipe, progress=False, checkpoint=tmp_path / "vae.pt") == losses
    assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), resumed.parameters(), strict=True))

    latents, factors = torch.randn(16, 4, 16, 16), dataset_factors(recipe)
    stages = (lambda idx: latents[torch.from_numpy(idx)], lambda idx: [factors[i] for i in idx])
    _, unet, text = build_models(recipe)
    losses = train_diffusion(*stages, unet, text, recipe, 1.0, progress=False)
    _, unet_a, text_a = build_models(recipe)
    train_diffusion(*stages, unet_a, text_a, recipe, 1.0, progress=False, steps=3, checkpoint=tmp_path / "d.pt")
    _, unet_b, text_b = build_models(recipe)
    assert train_diffusion(*stages, unet_b, text_b, recipe, 1.0, progress=False, checkpoint=tmp_path / "d.pt") == losses
    assert all(torch.equal(a, b) for a, b in zip(unet.parameters(), unet_b.parameters(), strict=True))
