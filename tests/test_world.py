"""Attribute World: deterministic generator, exact masks, evaluators exact on generator images."""

import numpy as np
import pytest

from ostaf.world.evaluate import (
    appearance_distance,
    classify_colour,
    classify_shape,
    classify_texture,
    recover_mask,
    shape_iou,
)
from ostaf.world.generator import COLOURS, SHAPES, STYLES, TEXTURES, Factors, is_held_out, render, sample


def test_generator_is_deterministic_and_seeds_differ():
    a, b, c = sample(7), sample(7), sample(8)
    assert np.array_equal(a.image, b.image) and a.factors == b.factors
    assert not np.array_equal(a.image, c.image)


def test_factor_counts_and_captions():
    assert len(SHAPES) >= 8 and len(COLOURS) >= 6 and len(TEXTURES) >= 4 and len(STYLES) >= 2
    assert Factors("star", "red", "striped").caption() == "a red striped star"
    assert Factors("ring", "blue", "solid", "noisy").caption() == "a blue plain ring, noisy style"


def test_held_out_combinations_are_excluded_or_drawn_on_request():
    held = sum(is_held_out(s, c, t) for s in SHAPES for c in COLOURS for t in TEXTURES)
    assert 0 < held < len(SHAPES) * len(COLOURS) * len(TEXTURES) // 4
    for seed in range(40):
        f = sample(seed).factors
        assert not is_held_out(f.shape, f.colour, f.texture)
        g = sample(seed, held_out=True).factors
        assert is_held_out(g.shape, g.colour, g.texture)


@pytest.mark.parametrize("style", ["flat", "noisy"])
def test_masks_are_exact(style):
    for seed in range(20):
        world = sample(seed, style=style)
        assert np.array_equal(recover_mask(world.image), world.mask)


def test_evaluators_are_exact_on_generator_images():
    for seed in range(120):
        world = sample(seed, held_out=None, style=("flat", "noisy")[seed % 2])
        mask = recover_mask(world.image)
        assert classify_shape(mask)[0] == world.factors.shape
        assert classify_colour(world.image, mask) == world.factors.colour
        assert classify_texture(world.image, mask) == world.factors.texture


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
