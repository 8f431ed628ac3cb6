"""--token-lambda: λ of a token checkpoint blends its placeholder from the nearest word (λ = 0) to e* (λ = 1)."""

import numpy as np
import pytest
import torch

from ostaf import apply, load_checkpoint
from ostaf.conditioning import PromptEncoder
from ostaf.config import GenerateConfig
from ostaf.errors import OstafError
from ostaf.generate import generate
from ostaf.mechanisms.dual_path import hard_ids
from ostaf.models import load_pipeline
from ostaf.strength import TokenStrength
from ostaf.train import train
from tests.conftest import on_both_models, tiny_config, token_once_per_model

PROMPT = "a vase in the appearance of *a"


@pytest.fixture(scope="module")
def token_ckpt(tmp_path_factory):
    """model → a token checkpoint (a few steps at a high rate, so e* is far from any word)."""
    return token_once_per_model(tmp_path_factory)


def encoded(pipe, prompt_ids):
    return PromptEncoder(pipe).encode(prompt_ids).states


@on_both_models
def test_lambda_zero_is_the_nearest_words_prompt_and_one_the_learned_token(token_ckpt, model):
    pipe = load_pipeline(model)
    blend = apply(pipe, token_ckpt(model), token_lambda=True)
    assert isinstance(blend, TokenStrength)
    prompts = PromptEncoder(pipe)
    ids = prompts.ids(PROMPT)
    learned = encoded(pipe, ids)
    with blend.at(0.0):
        hard = encoded(pipe, ids)
    assert torch.allclose(hard, encoded(pipe, hard_ids(ids, {blend.token_id: blend.word_ids[0]})), atol=1e-5)
    assert torch.allclose(encoded(pipe, ids), learned)  # λ put back
    with blend.at(0.5):  # halfway between the two rows
        row = torch.cat([e.get_input_embeddings().weight[blend.token_id] for _, e in prompts.pairs]).float()
    torch.testing.assert_close(row, (blend.word + blend.learned) / 2, atol=1e-5, rtol=0)
    e_star = load_checkpoint(token_ckpt(model)).tensors["token.embedding"].float()
    assert not torch.allclose(blend.word, e_star, atol=1e-3)  # a real blend: the word is not e* itself


@on_both_models
def test_from_the_attribute_word_lambda_zero_names_no_value_and_a_blend_lies_on_the_segment(token_ckpt, model):
    """`--token-lambda-origin attribute`: λ = 0 encodes the prompt with the attribute's own word in the
    placeholder's place ("in the appearance of appearance", in every text encoder), λ = 0.3 reads the row
    0.7·e_word + 0.3·e*, λ = 1 the learned token — and the origin is not the nearest word."""
    pipe = load_pipeline(model)
    blend = apply(pipe, token_ckpt(model), token_lambda=True, token_lambda_origin="attribute")
    prompts = PromptEncoder(pipe)
    ids = prompts.ids(PROMPT)
    learned = encoded(pipe, ids)
    word_id = prompts.tokenizer.convert_tokens_to_ids("appearance</w>")
    with blend.at(0.0):
        torch.testing.assert_close(encoded(pipe, ids), encoded(pipe, hard_ids(ids, {blend.token_id: word_id})))
    with blend.at(0.3):
        row = torch.cat([e.get_input_embeddings().weight[blend.token_id] for _, e in prompts.pairs]).float()
    word = torch.cat([e.get_input_embeddings().weight[word_id] for _, e in prompts.pairs]).float()
    torch.testing.assert_close(row, 0.7 * word + 0.3 * blend.learned, atol=1e-5, rtol=0)
    torch.testing.assert_close(encoded(pipe, ids), learned)  # λ put back
    nearest = apply(load_pipeline(model), token_ckpt(model), token_lambda=True)
    assert not torch.allclose(nearest.word, blend.word, atol=1e-3)  # another origin than the nearest word's


def test_the_origin_is_refused_without_the_blend_it_belongs_to():
    with pytest.raises(OstafError, match="add --token-lambda"):
        GenerateConfig(ckpt=["x"], prompt=[PROMPT], token_lambda_origin="attribute")
    assert GenerateConfig(ckpt=["x"], prompt=[PROMPT], token_lambda=True, token_lambda_origin="attribute")


def test_a_token_sweep_dials_with_the_option_and_stays_flat_without_it(token_ckpt, tmp_path):
    def sweep(on: bool):
        config = GenerateConfig(
            ckpt=[str(token_ckpt("tiny"))],
            prompt=[PROMPT],
            lam=[0.0, 1.0],
            seeds=[0],
            num_steps=3,
            out=str(tmp_path / f"on-{on}"),
            token_lambda=on,
            device="cpu",
        )
        images = generate(config, progress=False)[0].images
        return {lam: np.asarray(images[(lam, 0)]) for lam in (0.0, 1.0)}

    flat, dialled = sweep(False), sweep(True)
    assert np.array_equal(flat[0.0], flat[1.0])  # a token checkpoint: λ changes nothing by default
    same = np.abs(dialled[1.0].astype(int) - flat[1.0]).max()  # λ = 1 is the learned token either way
    assert same <= 2  # (up to the batch: the dialled sweep renders one batch per λ)
    # λ = 0 is the hard prompt (each λ its own batch, so only the row differs; tiny's random weights barely
    # listen to the prompt, so the pixels move a little: the encodings are checked exactly above)
    assert not np.array_equal(dialled[0.0], dialled[1.0])


def test_the_world_experiment_sweeps_lambda_only_where_it_acts():
    from ostaf.world.methods import generate_options, reads_lambda

    assert not reads_lambda("disentangled") and not reads_lambda("token") and not reads_lambda("finetune")
    assert reads_lambda("disentangled+lambda") and reads_lambda("lora") and reads_lambda("compose/ostaf-lite")
    assert reads_lambda("reference-attention-lambda") and not reads_lambda("reference-attention")
    # `shipped` layers per attribute: its shapes and appearances blend (their views), its styles' token from its
    # nearest word (style-views); a composition of its checkpoints blends their weights (so a timestep switch can
    # turn them off) and reads λ
    assert reads_lambda("shipped", "shape") and reads_lambda("shipped", "appearance")
    assert reads_lambda("shipped", "style") and generate_options("shipped", "style")["token_lambda"]
    assert reads_lambda("compose/shipped") and not reads_lambda("compose/disentangled")
    assert generate_options("compose@0.5/shipped")["token_lambda"] and "token_lambda" not in generate_options(
        "disentangled", "style"
    )


def test_lambda_blends_fine_tuned_weights_from_the_base_models_to_the_tuned_ones(tmp_path):
    """A fine-tuned checkpoint with --token-lambda: at λ every weight that trained is W₀ + λ·(W₁ − W₀) (checked
    at λ = 0.3, 0, 1.5 against the base model's and the checkpoint's tensors), the placeholder blends with it,
    and weights that did not train stay the base's; without the option λ changes nothing."""
    from ostaf.strength import WeightBlendStrength
    from tests.conftest import synthetic_image

    synthetic_image().save(tmp_path / "ref.png")
    config = tiny_config(tmp_path / "ref.png", tmp_path / "run", steps=3, lr=5e-2, trainable="blocks")
    ckpt = load_checkpoint(train(config, progress=False).out)
    tuned = {n[len("unet.") :]: t.float() for n, t in ckpt.tensors.items() if n.startswith("unet.")}
    base = dict(load_pipeline("tiny").unet.named_parameters())
    pipe = load_pipeline("tiny")
    blend = apply(pipe, ckpt, token_lambda=True)
    assert isinstance(blend, WeightBlendStrength) and tuned
    own = dict(pipe.unet.named_parameters())
    moved = [n for n in tuned if not torch.equal(tuned[n], base[n].float())]
    assert moved  # the fine-tuning changed weights, so the blend is not trivially equal at every λ
    for lam in (0.3, 0.0, 1.5):
        with blend.at(lam):
            for n in tuned:
                expected = base[n].float() + lam * (tuned[n] - base[n].float())
                torch.testing.assert_close(own[n].float(), expected, atol=1e-6, rtol=0)
            row = torch.cat([e.get_input_embeddings().weight[blend.token_id] for _, e in PromptEncoder(pipe).pairs])
            torch.testing.assert_close(row.float(), blend.word + lam * (blend.learned - blend.word), atol=1e-5, rtol=0)
    for n in tuned:  # λ put back: the tuned model
        torch.testing.assert_close(own[n].float(), tuned[n], atol=1e-6, rtol=0)
    untouched = [n for n in own if n not in tuned]
    assert untouched and all(torch.equal(own[n], base[n]) for n in untouched)
    pipe = load_pipeline("tiny")  # from the attribute's word: λ = 0 is the base model reading "appearance"
    blend = apply(pipe, ckpt, token_lambda=True, token_lambda_origin="attribute")
    assert isinstance(blend, WeightBlendStrength)
    with blend.at(0.0):
        word = PromptEncoder(pipe).word_row("appearance")
        row = torch.cat([e.get_input_embeddings().weight[blend.token_id] for _, e in PromptEncoder(pipe).pairs])
        torch.testing.assert_close(row.float(), word.float())
        own = dict(pipe.unet.named_parameters())
        assert all(torch.equal(own[n].float(), base[n].float()) for n in tuned)
    fixed = apply(load_pipeline("tiny"), ckpt)  # without the option: the tuned weights at every λ
    assert not isinstance(fixed, TokenStrength)


def guided(pipe, ids: torch.Tensor) -> dict:
    """The U-Net's text arguments for [unconditional, the prompt of `ids`] (classifier-free guidance's batch; SDXL:
    with the pooled embeddings, time ids zero)."""
    prompts = PromptEncoder(pipe)
    empty, cond = prompts.unconditional(1), prompts.encode(ids)
    arguments = dict(encoder_hidden_states=torch.cat([empty.states, cond.states]))
    if prompts.xl:
        pooled = torch.cat([empty.pooled, cond.pooled])
        arguments["added_cond_kwargs"] = dict(text_embeds=pooled, time_ids=torch.zeros(2, 6))
    return arguments


@on_both_models
def test_the_prediction_blend_weighs_the_hard_prompts_prediction_against_the_learned_ones(token_ckpt, model):
    """`--token-lambda-blend prediction`: inside a denoising batch each U-Net call returns ε_word + λ·(ε* − ε_word),
    ε_word on the prompt with the placeholder read as its nearest word and ε* on the prompt as the pipeline encoded
    it (checked at λ = 0.3 and 0 against two U-Net calls made by hand, for a keyword and a positional context and
    both output forms); the placeholder's row stays e* at every λ; at λ = 1 the U-Net runs once, untouched."""
    from ostaf.mechanisms.prediction_blend import PredictionBlend

    pipe = load_pipeline(model)
    blend = apply(pipe, token_ckpt(model), token_lambda=True, token_lambda_blend="prediction")
    prompts = PromptEncoder(pipe)
    learned_row = torch.cat([e.get_input_embeddings().weight[blend.token_id] for _, e in prompts.pairs]).float()
    with blend.at(0.0):  # the row is not blended: the prompt reads e*, λ goes to the predictions
        row = torch.cat([e.get_input_embeddings().weight[blend.token_id] for _, e in prompts.pairs]).float()
    torch.testing.assert_close(row, learned_row)
    torch.testing.assert_close(row, blend.learned, atol=1e-5, rtol=0)
    ids = prompts.ids(PROMPT)
    learned = guided(pipe, ids)  # the pipeline's call: the prompt as written, e* in the placeholder's place
    hard = guided(pipe, hard_ids(ids, {blend.token_id: blend.word_ids[0]}))  # its nearest word there (SDXL: pooled)
    assert not torch.allclose(learned["encoder_hidden_states"], hard["encoder_hidden_states"], atol=1e-4)
    size = pipe.unet.config.sample_size
    latents = torch.randn(2, pipe.unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(500)
    with torch.no_grad():
        by_hand = {name: pipe.unet(latents, t, **kw).sample for name, kw in (("learned", learned), ("hard", hard))}
    context = learned.pop("encoder_hidden_states")
    extra = learned  # SDXL: the learned prompt's pooled embedding, which the hard pass must replace
    mechanism = PredictionBlend(pipe.unet, prompts, [blend])
    calls = []
    counter = pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    for lam in (0.3, 0.0):
        expected = by_hand["hard"] + lam * (by_hand["learned"] - by_hand["hard"])
        with mechanism.active([PROMPT], guidance=5.0, lam=lam), torch.no_grad():
            keyword = pipe.unet(latents, t, encoder_hidden_states=context, **extra).sample
            positional = pipe.unet(latents, t, context, return_dict=False, **extra)[0]
        torch.testing.assert_close(keyword, expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(positional, expected, atol=1e-5, rtol=1e-4)
    row = torch.cat([e.get_input_embeddings().weight[blend.token_id] for _, e in prompts.pairs]).float()
    torch.testing.assert_close(row, learned_row)  # the hard prompt's rows were put back: the pipeline reads e*
    calls.clear()
    with mechanism.active([PROMPT], guidance=5.0, lam=1.0), torch.no_grad():
        same = pipe.unet(latents, t, encoder_hidden_states=context, **extra).sample
    assert len(calls) == 1 and torch.equal(same, by_hand["learned"])
    with torch.no_grad():  # the hook is gone after the block
        assert torch.equal(pipe.unet(latents, t, encoder_hidden_states=context, **extra).sample, by_hand["learned"])
    counter.remove()


@on_both_models
def test_a_prediction_sweep_ends_at_the_hard_prompt_and_the_token_and_weighs_them_in_between(
    token_ckpt, model, tmp_path
):
    """Generation with `--token-lambda-blend prediction --token-lambda-origin attribute`: λ = 0 draws what the
    row blend draws at λ = 0 (the prompt with the attribute's word), λ = 1 the learned token, and λ = 0.5 is
    not the row blend's image (another blend)."""

    def sweep(blend: str):
        config = GenerateConfig(
            ckpt=[str(token_ckpt(model))],
            prompt=[PROMPT],
            lam=[0.0, 0.5, 1.0],
            seeds=[0],
            num_steps=3,
            out=str(tmp_path / blend),
            token_lambda=True,
            token_lambda_origin="attribute",
            token_lambda_blend=blend,
            device="cpu",
        )
        images = generate(config, progress=False)[0].images
        return {lam: np.asarray(images[(lam, 0)]).astype(int) for lam in (0.0, 0.5, 1.0)}

    rows, predictions = sweep("row"), sweep("prediction")
    assert np.abs(predictions[0.0] - rows[0.0]).max() <= 1
    assert np.abs(predictions[1.0] - rows[1.0]).max() <= 1
    assert not np.array_equal(predictions[0.0], predictions[1.0])
    assert np.abs(predictions[0.5] - rows[0.5]).max() > 1


def test_the_prediction_blend_is_refused_where_it_cannot_weigh_two_prompts(tmp_path):
    """Without --token-lambda, with an option that changes the U-Net call too, and for a checkpoint with tuned
    weights (before any model loads, and in `apply`): one error each, naming what to do."""
    from ostaf.generate import check_adapters_can
    from tests.conftest import synthetic_image

    with pytest.raises(OstafError, match="add --token-lambda"):
        GenerateConfig(ckpt=["x"], prompt=[PROMPT], token_lambda_blend="prediction")
    for clash in (dict(compose_switch=0.4), dict(reference_attention=1.0), dict(lam_per_ckpt=[0.5])):
        with pytest.raises(OstafError, match=f"--{next(iter(clash)).replace('_', '-')}"):
            GenerateConfig(ckpt=["x"], prompt=[PROMPT], token_lambda=True, token_lambda_blend="prediction", **clash)
    assert GenerateConfig(ckpt=["x"], prompt=[PROMPT], token_lambda=True, token_lambda_blend="prediction")

    class Card:
        token = "*a"
        card = {"trainable": "blocks", "attribute": "appearance"}

    config = GenerateConfig(ckpt=["x"], prompt=[PROMPT], token_lambda=True, token_lambda_blend="prediction")
    with pytest.raises(OstafError, match="--token-lambda-blend row"):
        check_adapters_can(config, [Card()])
    Card.card = {"trainable": "token", "attribute": "appearance"}
    check_adapters_can(config, [Card()])
    synthetic_image().save(tmp_path / "ref.png")
    tuned = train(tiny_config(tmp_path / "ref.png", tmp_path / "run", steps=1, trainable="blocks"), progress=False)
    pipe = load_pipeline("tiny")
    rows = PromptEncoder(pipe).rows(PromptEncoder(pipe).tokenizer.vocab_size).clone()
    with pytest.raises(OstafError, match="--token-lambda-blend row"):
        apply(pipe, tuned.out, token_lambda=True, token_lambda_blend="prediction")
    assert len(PromptEncoder(pipe).tokenizer) == PromptEncoder(pipe).tokenizer.vocab_size  # nothing was added
    assert torch.equal(PromptEncoder(pipe).rows(len(rows)), rows)
