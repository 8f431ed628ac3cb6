"""Prior preservation (`--prior-images`): the base model's class images, cached, in every step's loss."""

import numpy as np
import pytest
import torch
from PIL import Image

from ostaf.errors import OstafError
from ostaf.generate import SCHEDULER_CLASSES, Sample, run_batch
from ostaf.mechanisms import prior
from ostaf.models import load_pipeline
from ostaf.train import denoising_loss, make_optimizer, mechanism_frames, optimizer_step, prepare, sample_batch
from tests.conftest import tiny_config


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache of this test's own, and class images in 3 DDIM steps (25 in use): what is tested is which
    images are drawn and how they enter the loss, not how good they are; the step count is read at call time."""
    monkeypatch.setenv(prior.CACHE_ENV, str(tmp_path / "prior-cache"))
    monkeypatch.setattr(prior, "NUM_STEPS", 3)
    return tmp_path / "prior-cache"


def step_loss(setup) -> float:
    return optimizer_step(setup, make_optimizer(setup), torch.amp.GradScaler("cuda", enabled=False), torch.Generator())


def test_the_class_images_are_the_base_models_and_generated_once(reference, tmp_path, cache, monkeypatch):
    images = (
        prepare(tiny_config(reference, tmp_path / "a", prior_images=2, grad_accum=1))
        .mechanism(prior.PriorPreservation)
        .images
    )
    assert images.prompts == ["a dog"] and images.latents.shape[0] == 2
    folder = images.folder
    assert folder.parent == cache
    # keyed by the run's model (a random preset with its seed), class prompt, count, resolution and seed
    assert folder.name == prior.cache_key("tiny@42", ["a dog"], 2, 64, 42)
    base = load_pipeline("tiny", seed=42)  # a fresh base model (the run seeds a preset): no offsets, no placeholder
    base.scheduler = SCHEDULER_CLASSES["ddim"].from_config(base.scheduler.config)
    expected = run_batch(
        base, [], [Sample("a dog", 1.0, 42), Sample("a dog", 1.0, 43)], prior.NUM_STEPS, prior.GUIDANCE, None
    )
    cached = [np.asarray(Image.open(folder / f"{i:03d}.png")) for i in range(2)]
    assert all(np.array_equal(c, np.asarray(e)) for c, e in zip(cached, expected, strict=True))

    def no_generation(*args, **kwargs):
        raise AssertionError("the class images were generated again")

    monkeypatch.setattr("ostaf.generate.run_batch", no_generation)
    again = prepare(tiny_config(reference, tmp_path / "b", prior_images=2, grad_accum=1))
    again_images = again.mechanism(prior.PriorPreservation).images
    assert again_images.folder == folder and torch.equal(again_images.latents, images.latents)


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


def test_the_prior_term_is_its_weight_times_the_class_images_loss(reference, tmp_path, cache):
    """The step's prior term is `--prior-loss-weight` × `prior_loss` on the same draws (a weight that divided
    the loss would still be linear in the weight: the step test above cannot tell)."""
    setup = prepare(tiny_config(reference, tmp_path / "w", prior_images=2, prior_loss_weight=3.0, grad_accum=1))
    mechanism = setup.mechanism(prior.PriorPreservation)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(5)
        batch = sample_batch(setup, generator)
        term = denoising_loss(setup, *batch, frames=mechanism_frames(setup, batch, generator)).frames
        generator = torch.Generator().manual_seed(5)
        sample_batch(setup, generator)  # the same draws again: the prior's come after the batch's
        alone = prior.prior_loss(setup, mechanism.images, generator)
    assert abs(float(alone) - 1) > 0.01  # a loss of 1 would hide weight / loss
    assert float(term) == pytest.approx(3.0 * float(alone), rel=1e-5)


def test_a_token_has_no_weights_to_preserve(reference, tmp_path):
    with pytest.raises(OstafError, match="drop --prior-images"):
        tiny_config(reference, tmp_path / "t", prior_images=2, trainable="token")


def test_several_class_prompts_share_the_images_and_each_image_keeps_its_prompt(reference, tmp_path, cache):
    """Image i is the base model's image of prompt i mod P (seed + i), and the prior loss of a drawn image is
    computed under its own prompt's conditioning, not the first prompt's."""
    texts = ["a red ball", "a blue cube"]
    setup = prepare(tiny_config(reference, tmp_path / "v", prior_images=2, prior_prompt=texts, grad_accum=1))
    images = setup.mechanism(prior.PriorPreservation).images
    assert images.prompts == texts
    base = load_pipeline("tiny", seed=42)
    base.scheduler = SCHEDULER_CLASSES["ddim"].from_config(base.scheduler.config)
    expected = run_batch(base, [], [Sample("a blue cube", 1.0, 43)], prior.NUM_STEPS, prior.GUIDANCE, None)[0]
    cached = np.asarray(Image.open(images.folder / "001.png")).astype(int)
    # drawn in a batch with image 0, here alone: uint8 rounding may differ by one level (another prompt: ~12)
    assert np.abs(cached - np.asarray(expected).astype(int)).max() <= 1

    def loss_under(text: str, generator: torch.Generator) -> torch.Tensor:
        """The same draws as `prior_loss`, the conditioning encoded here from `text` alone."""
        pick = torch.randint(0, 2, (1,), generator=generator)
        noise = torch.randn((1, *images.latents.shape[1:]), generator=generator)
        t = torch.randint(0, 1000, (1,), generator=generator)
        scheduler = setup.noise_scheduler
        latents = images.latents[pick] * setup.pipe.vae.config.scaling_factor
        states = setup.prompts.encode(setup.prompts.ids([text])).states
        pred = setup.unet(scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=states).sample
        return pick, torch.nn.functional.mse_loss(pred, noise)

    with torch.no_grad():
        for seed in range(6):  # both images get drawn
            got = prior.prior_loss(setup, images, torch.Generator().manual_seed(seed))
            pick, own = loss_under(texts[0], torch.Generator().manual_seed(seed))
            _, other = loss_under(texts[1], torch.Generator().manual_seed(seed))
            mine, not_mine = (own, other) if int(pick) == 0 else (other, own)
            # random tiny weights: the prompts change the loss by ~1e-5 only, float noise is ~1e-7
            assert abs(float(got) - float(mine)) < 1e-6 < abs(float(got) - float(not_mine))


def test_varied_class_prompts_name_other_values_of_the_attributes_not_learned():
    from ostaf.world.references import reference_world, varied_class_prompts

    factors = reference_world("shape", 3).factors
    prompts = varied_class_prompts("shape", factors, count=4)
    assert len(set(prompts)) == 4 and all(p.endswith(" object") for p in prompts)
    assert all(factors.colour not in p.split() for p in prompts)  # another look than the reference's own
    appearance = varied_class_prompts("appearance", reference_world("appearance", 3).factors, count=3)
    assert all(reference_world("appearance", 3).factors.shape not in p for p in appearance)


def test_the_cache_key_is_every_input_and_one_prompt_keeps_the_key_it_always_had():
    """A change of model, prompts, count, resolution, seed, steps or guidance makes new images; a cache made
    by an earlier version (one prompt, stored as a string) is still found: the key is the documented spec's."""
    import hashlib
    import json

    def spec_key(spec: dict) -> str:  # the key as it was first written: sorted JSON, sha256, 16 hex digits
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    base = dict(model="tiny", prompts=["a dog"], count=4, resolution=64, seed=0)
    fixed = {"num_steps": prior.NUM_STEPS, "guidance": prior.GUIDANCE}
    old = {"model": "tiny", "prompt": "a dog", "count": 4, "resolution": 64, "seed": 0} | fixed
    assert prior.cache_key(**base) == spec_key(old)
    several = base | {"prompts": ["a dog", "a red dog"]}
    assert prior.cache_key(**several) == spec_key(old | {"prompt": ["a dog", "a red dog"]})
    changed = [
        several | {"prompts": ["a dog", "a blue dog"]},
        base | {"model": "sd14"},
        base | {"prompts": ["a cat"]},
        base | {"count": 5},
        base | {"resolution": 128},
        base | {"seed": 1},
    ]
    keys = {prior.cache_key(**spec) for spec in [base, several, *changed]}
    assert len(keys) == 2 + len(changed)


def test_the_class_images_are_drawn_at_the_asked_resolution_and_indexed(cache):
    """Each image at the run's resolution (not the model's default), in a folder keyed by every input, with an
    index naming each image's prompt and seed (what a reader of the cache needs to trust it)."""
    import json

    pipe = load_pipeline("tiny", seed=0)
    folder = prior.class_images(pipe, "tiny", ["a dog", "a cat"], 3, 32, 7)
    assert folder == cache / prior.cache_key("tiny", ["a dog", "a cat"], 3, 32, 7)
    assert [Image.open(folder / f"{i:03d}.png").size for i in range(3)] == [(32, 32)] * 3
    index = json.loads((folder / prior.INDEX).read_text())
    assert index == {"model": "tiny", "prompts": ["a dog", "a cat", "a dog"], "seeds": [7, 8, 9]}
