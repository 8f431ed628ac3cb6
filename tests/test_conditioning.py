"""The text conditioning training builds (`ostaf.conditioning`) is what diffusers' pipelines build, on SD-1.x and
SDXL: the same states and pooled embedding as `encode_prompt`, the size/crop time ids of diffusers' SDXL trainers,
and the live e* during training equal to the token row a stock pipeline reads afterwards."""

from __future__ import annotations

import torch
from PIL import Image

from ostaf.conditioning import PromptEncoder
from ostaf.models import load_pipeline
from ostaf.train import (
    denoising_loss,
    finalize,
    load_reference,
    prepare,
    sample_batch,
    text_context,
    unet_conditioning,
)
from tests.conftest import on_both_models, pipe_on_both_models, synthetic_image, tiny_config

PROMPTS = ["a photo of a cat", "a red boat on a lake"]


@pipe_on_both_models
@torch.no_grad()
def test_the_conditioning_is_the_pipelines_own(tiny_pipe):
    prompts = PromptEncoder(tiny_pipe)
    ours = prompts.encode(prompts.ids(PROMPTS))
    empty = prompts.unconditional(len(PROMPTS))
    theirs = tiny_pipe.encode_prompt(PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    assert torch.equal(ours.states, theirs[0]) and torch.equal(empty.states, theirs[1])
    if prompts.xl:  # SDXL: both encoders' penultimate states, the second's pooled projection; zeros for ""
        assert ours.states.shape[-1] == 32 + 48 and torch.equal(ours.pooled, theirs[2])
        assert torch.equal(empty.pooled, theirs[3]) and not empty.states.any()
    else:
        assert ours.pooled is None


@pipe_on_both_models
@torch.no_grad()
def test_a_generation_conditions_on_the_pipelines_own_time_ids_and_unconditional_half(tiny_pipe):
    prompts = PromptEncoder(tiny_pipe)
    cond, empty = prompts.at_size(PROMPTS, 96), prompts.unconditional_at(96, batch=len(PROMPTS))
    theirs = tiny_pipe.encode_prompt(PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    assert torch.equal(cond.states, theirs[0]) and torch.equal(empty.states, theirs[1])
    if prompts.xl:  # the pipeline's default micro-conditioning: original = target = the image size, no crop
        projection = tiny_pipe.text_encoder_2.config.projection_dim
        ids = tiny_pipe._get_add_time_ids((96, 96), (0, 0), (96, 96), torch.float32, projection)
        assert cond.time_ids.dtype == ids.dtype and torch.equal(cond.time_ids, ids.expand(len(PROMPTS), -1))
        assert torch.equal(empty.time_ids, cond.time_ids)
    else:
        assert cond.time_ids is None and empty.time_ids is None
    pick = torch.tensor([1, 0, 1])  # a batch drawn from several prompts: each sample its own prompt's rows
    picked = cond.select(pick)
    for mine, whole in zip(fields(picked), fields(cond), strict=True):
        assert (mine is None and whole is None) or torch.equal(mine, whole[pick])
    one = prompts.at_size(PROMPTS[:1], 96)
    for mine, whole in zip(fields(one.expand(3)), fields(one), strict=True):  # one prompt for a batch of 3
        assert (mine is None and whole is None) or torch.equal(mine, whole.repeat(3, *[1] * (whole.dim() - 1)))


def fields(cond) -> tuple:
    """What a `Conditioning` carries, in order."""
    return cond.states, cond.pooled, cond.time_ids


def test_each_sample_gets_its_augmentations_size_and_crop_as_the_sdxl_trainers_do(tmp_path):
    wide = tmp_path / "wide.png"
    synthetic_image(96).resize((120, 80)).save(wide)  # not square: the crops start at different x
    config = tiny_config(wide, tmp_path / "run", model="tiny-sdxl", augment_bank=4, batch_size=4)
    setup = prepare(config)
    expected = [[80, 120, r.crop[1], r.crop[0], 64, 64] for r in load_reference(config, 64).recipes]
    assert setup.time_ids.tolist() == expected and len({row[3] for row in expected}) > 1
    batch = sample_batch(setup, torch.Generator().manual_seed(0))
    assert len(set(batch.pick.tolist())) > 1  # the batch mixes augmentations
    seen = []
    setup.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["added_cond_kwargs"]["time_ids"]), with_kwargs=True
    )
    denoising_loss(setup, *batch)
    assert torch.equal(seen[0], setup.time_ids[batch.pick])  # the micro-conditioning of each sample's own crop


@on_both_models
def test_the_live_token_during_training_is_the_row_a_stock_pipeline_reads_after(reference, tmp_path, model):
    pipe = load_pipeline(model)
    setup = prepare(tiny_config(reference, tmp_path / "run", model=model), pipe=pipe)
    with torch.no_grad():
        during = text_context(setup)
        cond = unet_conditioning(setup, 1)
    finalize(setup)  # hooks off, e* written into each encoder's row
    prompt = setup.attribute.training_prompt("dog")
    after = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    torch.testing.assert_close(during.states, after[0], rtol=0, atol=1e-6)
    if model == "tiny-sdxl":
        torch.testing.assert_close(during.pooled, after[2], rtol=0, atol=1e-6)
        assert torch.equal(cond.time_ids, setup.time_ids[:1])  # no sample given: the first augmentation's


def test_a_reference_of_any_size_keeps_its_original_size_in_the_time_ids(tmp_path):
    tall = tmp_path / "tall.png"
    Image.new("RGB", (72, 160), (200, 30, 30)).save(tall)
    setup = prepare(tiny_config(tall, tmp_path / "run", model="tiny-sdxl", attribute="shape"))
    assert setup.time_ids.tolist() == [[160, 72, 0, 0, 64, 64]]  # shape: padded whole, no crop


@on_both_models
def test_a_prompt_longer_than_the_encoders_window_is_cut_to_it_as_the_pipeline_cuts_it(model):
    """`PromptEncoder.ids` pads and truncates each tokenizer to its window (77), as the stock pipeline does, so a
    library caller's long prompt encodes to the same states as the pipeline's own encoding."""
    pipe = load_pipeline(model)
    prompts = PromptEncoder(pipe)
    long = "a vase " + "with a red stripe and " * 30 + "a handle"
    ids = prompts.ids([long, "a vase"])
    assert ids.shape == (len(prompts.pairs), 2, 77)
    for (tokenizer, _), row in zip(prompts.pairs, ids, strict=True):
        full = tokenizer(long).input_ids
        assert len(full) > 77 and row[0, :76].tolist() == full[:76]  # cut, not an error
