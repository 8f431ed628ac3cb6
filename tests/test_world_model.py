"""The committed Attribute World model: it loads as a preset, generates, and its recipe still reproduces it."""

import json

import numpy as np
import pytest
import torch

from ostaf.errors import OstafError
from ostaf.model_spec import model_resolution
from ostaf.models import load_pipeline
from ostaf.presets import world_model_path
from ostaf.world.pretrain import (
    LOSS_HEAD,
    WorldRecipe,
    build_models,
    encode,
    train_diffusion,
    train_vae,
    world_images,
)

ASSET = world_model_path()
RECORD = json.loads((ASSET / "recipe.json").read_text())


def test_asset_is_small_safetensors_from_the_current_recipe():
    files = [p for p in ASSET.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 40 * 2**20  # the package-data cap of world v3
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert RECORD["recipe_hash"] == WorldRecipe().hash(), "the recipe changed: regenerate the asset (see README)"
    for key in ("held_in", "held_out"):  # caption-following of its own samples is recorded beside the weights
        assert set(RECORD["caption_following"][key]) >= {"shape", "colour", "texture"}
        for factor in ("shape", "colour", "texture", "style"):  # named captions: what world v3 must keep
            assert RECORD["caption_following"][key][factor] >= 0.9, (key, factor)


def test_the_recipe_reproduces_the_first_losses_of_the_committed_run():
    recipe = WorldRecipe()
    vae, unet, text_encoder = build_models(recipe)
    vae_losses = train_vae(vae, recipe, progress=False, steps=LOSS_HEAD)
    np.testing.assert_allclose(vae_losses, RECORD["vae_losses_head"], rtol=2e-3)

    # the U-Net stage learned the latents of the shipped (fp16-rounded) VAE: replay it on that VAE
    shipped = load_pipeline("attribute-world").vae.float().eval()
    losses = train_diffusion(
        lambda idx: encode(shipped, idx),
        lambda idx: world_images(idx)[1],
        unet,
        text_encoder,
        recipe,
        shipped.config.scaling_factor,
        progress=False,
        steps=LOSS_HEAD,
    )
    np.testing.assert_allclose(losses, RECORD["diffusion_losses_head"], rtol=2e-3)


def test_loads_through_the_model_loader_and_generates_world_images():
    assert model_resolution("attribute-world") == 64
    pipe = load_pipeline("attribute-world")
    image = pipe(
        "a red striped star",
        num_inference_steps=10,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()


def test_missing_asset_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("OSTAF_WORLD_MODEL", str(tmp_path / "nowhere"))
    with pytest.raises(OstafError, match="ostaf.world.pretrain"):
        load_pipeline("attribute-world")
