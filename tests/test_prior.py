"""Prior preservation (`--prior-images`): the base model's class images, cached, in every step's loss."""

import numpy as np
import pytest
import torch
from PIL import Image

from ostaf.errors import OstafError
from ostaf.generate import SCHEDULER_CLASSES, Sample, run_batch
from ostaf.mechanisms import prior
from ostaf.models import load_pipeline
from ostaf.train import make_optimizer, optimizer_step, prepare
from tests.conftest import tiny_config


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(prior.CACHE_ENV, str(tmp_path / "prior-cache"))
    return tmp_path / "prior-cache"


def step_loss(setup) -> float:
    return optimizer_step(setup, make_optimizer(setup), torch.amp.GradScaler("cuda", enabled=False), torch.Generator())


def test_the_class_images_are_the_base_models_and_generated_once(reference, tmp_path, cache, monkeypatch):
    setup = prepare(tiny_config(reference, tmp_path / "a", prior_images=2, grad_accum=1))
    assert setup.prior.prompt == "a dog" and setup.prior.latents.shape[0] == 2
    folder = setup.prior.folder
    assert folder.parent == cache
    base = load_pipeline("tiny", seed=42)  # a fresh base model (the run seeds a preset): no offsets, no placeholder
    base.scheduler = SCHEDULER_CLASSES["ddim"].from_config(base.scheduler.config)
    expected = run_batch(base, [], [Sample("a dog", 1.0, 42), Sample("a dog", 1.0, 43)], 25, 5.0, None)
    cached = [np.asarray(Image.open(folder / f"{i:03d}.png")) for i in range(2)]
    assert all(np.array_equal(c, np.asarray(e)) for c, e in zip(cached, expected, strict=True))

    def no_generation(*args, **kwargs):
        raise AssertionError("the class images were generated again")

    monkeypatch.setattr("ostaf.generate.run_batch", no_generation)
    again = prepare(tiny_config(reference, tmp_path / "b", prior_images=2, grad_accum=1))
    assert again.prior.folder == folder and torch.equal(again.prior.latents, setup.prior.latents)


def test_the_prior_loss_enters_every_step(reference, tmp_path, cache):
    """The step's loss is the instance loss plus weight × the class images' loss (and nothing with it off)."""
    losses = {}
    one = {"grad_accum": 1, "prior_images": 2}  # one micro-batch: the prior's draws come after the instance's
    for weight in (0.0, 1.0, 3.0):
        losses[weight] = step_loss(
            prepare(tiny_config(reference, tmp_path / f"w{weight}", prior_loss_weight=weight, **one))
        )
    off = step_loss(prepare(tiny_config(reference, tmp_path / "off", grad_accum=1)))
    assert losses[0.0] == pytest.approx(off, rel=1e-6)
    prior_term = losses[1.0] - losses[0.0]
    assert prior_term > 0 and losses[3.0] - losses[0.0] == pytest.approx(3 * prior_term, rel=1e-4)


def test_a_token_has_no_weights_to_preserve(reference, tmp_path):
    with pytest.raises(OstafError, match="drop --prior-images"):
        tiny_config(reference, tmp_path / "t", prior_images=2, trainable="token")
