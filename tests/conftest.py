"""Shared fixtures: the `tiny` presets (SD-1.x- and SDXL-shaped) and small synthetic reference images.

A core test runs on both architectures by taking `model` (or `tiny_pipe`, indirectly) from `on_both_models`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ostaf.conditioning import Conditioning, micro_conditioning
from ostaf.config import TrainConfig
from ostaf.models import load_pipeline

torch.set_num_threads(2)


TINY_MODELS = ("tiny", "tiny-sdxl")
on_both_models = pytest.mark.parametrize("model", TINY_MODELS)
pipe_on_both_models = pytest.mark.parametrize("tiny_pipe", TINY_MODELS, indirect=True)


@pytest.fixture(autouse=True, scope="session")
def prior_cache(tmp_path_factory):
    """Class images of `--prior-images` go to a temporary cache, never the user's ~/.cache."""
    import os

    from ostaf.mechanisms.prior import CACHE_ENV

    folder = tmp_path_factory.mktemp("prior-cache")
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous


@pytest.fixture
def tiny_pipe(request):
    """The `tiny` pipeline (or `tiny-sdxl`, under `pipe_on_both_models`)."""
    return load_pipeline(getattr(request, "param", "tiny"), seed=0)


def unet_inputs(unet, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, Conditioning]:
    """Random 8×8 latents, t = 500 and random conditioning of the U-Net's shape (SDXL: with pooled text and time
    ids), for tests that drive a U-Net directly."""
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, 8, 8, generator=g)
    cond = Conditioning(torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g))
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        time_ids = micro_conditioning((64, 64), (0, 0), (64, 64)).expand(batch, -1)
        cond = Conditioning(cond.states, torch.randn(batch, pooled, generator=g), time_ids)
    return sample, torch.tensor([500] * batch), cond


def text_encoders(pipe) -> list:
    return [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e is not None]


def synthetic_image(size: int = 96, colour=(200, 30, 30), seed: int = 0) -> Image.Image:
    """A coloured square with a stripe texture on white: something with shape and appearance."""
    rng = np.random.default_rng(seed)
    array = np.full((size, size, 3), 255, np.uint8)
    lo, hi = size // 5, size - size // 4
    array[lo:hi, lo:hi] = colour
    array[lo:hi:6, lo:hi] = (20, 20, 20)
    array = np.clip(array.astype(int) + rng.integers(-5, 6, array.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(array)


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    path = tmp_path / "reference.png"
    synthetic_image().save(path)
    return path


def tiny_config(reference: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(
        image=str(reference),
        class_name="dog",
        attribute="appearance",
        model="tiny",
        out=str(out),
        steps=4,
        checkpoint_every=0,
        lr=1e-3,
        device="cpu",
        segment=False,
    )
    return TrainConfig(**(values | overrides))


def token_once_per_model(tmp_path_factory, **overrides):
    """For a module fixture: model → a token checkpoint trained a few steps at a high rate (e* far from any
    word), on first use; `overrides` go to its `TrainConfig`."""
    from ostaf.train import train

    made: dict[str, Path] = {}

    def make(model: str) -> Path:
        if model not in made:
            root = tmp_path_factory.mktemp(f"token-{model}")
            synthetic_image().save(root / "ref.png")
            values = dict(steps=3, lr=5e-2, trainable="token", model=model) | overrides
            made[model] = train(tiny_config(root / "ref.png", root / "run", **values), progress=False).out
        return made[model]

    return make


def trained_once_per_model(tmp_path_factory, attributes: tuple[str, ...], steps: int):
    """For a module fixture: model → {attribute: its lite checkpoint, "reference": the image}, trained on first use."""
    from ostaf.train import train

    made: dict[str, dict] = {}

    def make(model: str) -> dict:
        if model not in made:
            root = tmp_path_factory.mktemp(f"ckpts-{model}")
            ref = root / "ref.png"
            synthetic_image().save(ref)
            made[model] = {"reference": ref}
            for attribute in attributes:
                config = tiny_config(ref, root / attribute, steps=steps, attribute=attribute, model=model)
                made[model][attribute] = train(config, progress=False).out
        return made[model]

    return make
