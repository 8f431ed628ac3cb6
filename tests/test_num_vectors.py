"""`--num-vectors N`: the placeholder is N tokens (`*a`, `*a_1`, …), each its own row — in training (the live
injection), in the checkpoint, in a stock pipeline after `apply` or `ostaf export`, and in what reads the
placeholder's nearest words (`--token-lambda`, the dual path, the nearest-word term)."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

from ostaf import apply, load_checkpoint
from ostaf.checkpoint import load_base_pipeline
from ostaf.conditioning import PromptEncoder
from ostaf.config import ExportConfig
from ostaf.errors import OstafError
from ostaf.export import export
from ostaf.generate import check_length
from ostaf.mechanisms.contrastive import NearestWordTerm
from ostaf.mechanisms.dual_path import DualPathTraining, VanillaPrompts, hard_ids
from ostaf.models import load_pipeline
from ostaf.strength import TokenStrength
from ostaf.train import finalize, prepare, text_context
from tests.conftest import on_both_models, tiny_config, token_once_per_model

PROMPT = "a vase in the appearance of *a"
VECTORS = 3


@pytest.fixture(scope="module")
def three_vector_ckpt(tmp_path_factory):
    """model → a token checkpoint of 3 vectors, trained a few steps at a high rate."""
    return token_once_per_model(tmp_path_factory, num_vectors=VECTORS)


def rows_of(pipe, ids: list[int]) -> torch.Tensor:
    """(len(ids), ΣD): the text encoders' rows of these ids, concatenated across encoders."""
    return torch.cat([e.get_input_embeddings().weight[ids] for _, e in PromptEncoder(pipe).pairs], dim=-1).float()


def spread(setup) -> None:
    """Move the vectors apart (each its own random residual), as training does, so a mix-up shows."""
    with torch.no_grad():
        setup.token.residual.copy_(torch.randn(setup.token.residual.shape, generator=torch.Generator().manual_seed(0)))


@on_both_models
def test_each_vector_is_its_own_token_and_row_in_a_stock_pipeline(three_vector_ckpt, model):
    ckpt = load_checkpoint(three_vector_ckpt(model))
    learned = ckpt.tensors["token.embedding"]
    assert learned.shape[0] == VECTORS
    assert all(not torch.allclose(learned[0], row) for row in learned[1:])  # each vector trained apart
    pipe = load_base_pipeline(ckpt)
    apply(pipe, ckpt)
    prompts = PromptEncoder(pipe)
    ids = prompts.token_ids("*a")
    assert ids == list(range(ids[0], ids[0] + VECTORS)) and prompts.token_ids("*m") == []  # *m: not applied
    assert [prompts.tokenizer.convert_ids_to_tokens(i) for i in ids] == ["*a", "*a_1", "*a_2"]
    torch.testing.assert_close(rows_of(pipe, ids), learned, rtol=0, atol=1e-6)
    ours = prompts.encode(prompts.ids(PROMPT)).states  # ostaf reads *a as its three tokens, as the pipeline does
    theirs = pipe.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    assert torch.equal(ours, theirs[0])
    assert all((prompts.ids(PROMPT)[0, 0] == i).sum() == 1 for i in ids)


@on_both_models
def test_the_live_vectors_during_training_are_the_rows_a_stock_pipeline_reads_after(reference, tmp_path, model):
    pipe = load_pipeline(model)
    setup = prepare(tiny_config(reference, tmp_path / "run", model=model, num_vectors=VECTORS), pipe=pipe)
    spread(setup)
    with torch.no_grad():
        during = text_context(setup)
    finalize(setup)  # hooks off, each vector written into its own row
    after = pipe.encode_prompt(
        setup.attribute.training_prompt("dog"), device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    torch.testing.assert_close(during.states, after[0], rtol=0, atol=1e-6)


@on_both_models
def test_export_writes_every_vector_and_a_stock_pipeline_loads_them(three_vector_ckpt, tmp_path, model):
    ckpt_dir = three_vector_ckpt(model)
    report = export(ExportConfig(ckpt=str(ckpt_dir), out=str(tmp_path / "x.safetensors")))
    ckpt = load_checkpoint(ckpt_dir)
    applied, stock = load_base_pipeline(ckpt), load_base_pipeline(ckpt)
    apply(applied, ckpt)
    rows = load_file(report.embedding)
    if model == "tiny":
        assert rows["*a"].shape[0] == VECTORS
        stock.load_textual_inversion(report.embedding, token="*a")
    else:  # SDXL's file: one (N, D) per text encoder
        assert rows["clip_l"].shape[0] == rows["clip_g"].shape[0] == VECTORS
        stock.load_textual_inversion(
            rows["clip_l"], token="*a", text_encoder=stock.text_encoder, tokenizer=stock.tokenizer
        )
        stock.load_textual_inversion(
            rows["clip_g"], token="*a", text_encoder=stock.text_encoder_2, tokenizer=stock.tokenizer_2
        )
    kwargs = dict(device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    torch.testing.assert_close(stock.encode_prompt(PROMPT, **kwargs)[0], applied.encode_prompt(PROMPT, **kwargs)[0])


def test_token_lambda_zero_reads_each_vector_as_its_own_nearest_word():
    pipe = load_pipeline("tiny")
    prompts = PromptEncoder(pipe)
    vocabulary = prompts.rows(prompts.tokenizer.vocab_size)
    words = [400, 2000, 7000]  # a different word per vector
    learned = vocabulary[words] + 1e-4 * torch.randn(len(words), vocabulary.shape[1])
    token_id = prompts.add_token("*a", learned)
    blend = TokenStrength("*a", "token", prompts, token_id, learned)
    assert blend.word_ids == words
    with blend.at(0.0):
        torch.testing.assert_close(rows_of(pipe, prompts.token_ids("*a")), vocabulary[words])
    torch.testing.assert_close(rows_of(pipe, prompts.token_ids("*a")), learned)  # λ put back


def test_token_lambda_zero_from_the_attribute_word_reads_it_in_every_vector():
    pipe = load_pipeline("tiny")
    prompts = PromptEncoder(pipe)
    vocabulary = prompts.rows(prompts.tokenizer.vocab_size)
    learned = vocabulary[[400, 2000, 7000]] + 1e-4 * torch.randn(3, vocabulary.shape[1])
    token_id = prompts.add_token("*a", learned)
    word = prompts.word_row("appearance")
    blend = TokenStrength("*a", "token", prompts, token_id, learned, origin=word)
    with blend.at(0.25):
        torch.testing.assert_close(rows_of(pipe, prompts.token_ids("*a")), 0.75 * word + 0.25 * learned)
    torch.testing.assert_close(rows_of(pipe, prompts.token_ids("*a")), learned)  # λ put back


def test_the_vanilla_paths_read_every_vector_as_its_nearest_word(reference, tmp_path):
    setup = prepare(tiny_config(reference, tmp_path / "run", num_vectors=VECTORS, dual_path=0.5))
    spread(setup)
    dual = next(m for m in setup.mechanisms if isinstance(m, DualPathTraining))
    vocabulary = F.normalize(setup.prompts.rows(setup.token_id), dim=-1)
    nearest = (F.normalize(setup.token().detach(), dim=-1) @ vocabulary.T).argmax(-1).tolist()
    replace = {setup.token_id + v: w for v, w in enumerate(nearest)}
    hard = hard_ids(setup.input_ids, replace)
    assert not (hard >= setup.token_id).any()  # no placeholder vector left in the hard prompt
    with torch.no_grad():
        torch.testing.assert_close(dual.vanilla_context(setup), setup.prompts.encode(hard).states)
    finalize(setup)  # generation's vanilla path: from the rows written into the text encoder
    assert set(VanillaPrompts(setup.prompts, ["*a"]).replace) == set(setup.prompts.token_ids("*a"))


def test_the_nearest_word_term_reaches_every_vector(reference, tmp_path):
    setup = prepare(tiny_config(reference, tmp_path / "run", num_vectors=VECTORS, nn_contrastive=0.1, nn_vocab=64))
    spread(setup)
    term = next(m for m in setup.mechanisms if isinstance(m, NearestWordTerm))
    loss = term.loss(setup, None, None)
    each = [term.contrast.loss(row, setup.step) for row in setup.token().reshape(VECTORS, -1)]
    torch.testing.assert_close(loss, 0.1 * torch.stack(each).mean())  # the weight × the vectors' mean term
    assert len({round(float(t), 6) for t in each}) == VECTORS  # spread: a sum or one vector's term would differ
    loss.backward()
    assert all(row.abs().sum() > 0 for row in setup.token.residual.grad)
    lines = term.words(setup)  # one line per vector: its token, then its 5 nearest words, nearest first
    assert [line.split(": ")[0] for line in lines] == ["*a", "*a_1", "*a_2"]
    vocabulary = F.normalize(setup.prompts.rows(setup.token_id), dim=-1)
    nearest = (F.normalize(setup.token().detach(), dim=-1) @ vocabulary.T).argmax(-1).tolist()
    for line, word_id in zip(lines, nearest, strict=True):
        words = line.split(": ", 1)[1].split(", ")
        assert len(words) == 5 and all(re.fullmatch(r"\S+ \(-?[0-9.]+\)", word) for word in words)  # 'word (cos)'
        assert words[0].startswith(setup.prompts.tokenizer.convert_ids_to_tokens(word_id) + " (")


def test_a_prompt_whose_cut_drops_a_later_vector_is_refused(three_vector_ckpt):
    ckpt = load_checkpoint(three_vector_ckpt("tiny"))
    pipe = load_base_pipeline(ckpt)
    apply(pipe, ckpt)
    prompt = " ".join(["red"] * 74) + " *a"  # 74 words + *a = 75 + 2 specials: fits as one token, not as three
    assert len(pipe.tokenizer(prompt).input_ids) <= 77
    with pytest.raises(OstafError, match=r"\*a"):
        check_length(pipe, prompt, ["*a"])


@pytest.mark.parametrize("count", [0, 17])
def test_a_placeholder_of_no_or_too_many_vectors_is_refused(reference, tmp_path, count):
    with pytest.raises(OstafError, match="num_vectors"):
        tiny_config(reference, tmp_path, num_vectors=count)


def test_the_live_injection_writes_the_placeholders_vectors_and_no_token_after_them():
    """Training routes e*'s N rows into the positions of `*a`, `*a_1`, …; a token added after them (`*m`, the id
    right after the last vector) and every word keep their own rows."""
    pipe = load_pipeline("tiny")
    prompts = PromptEncoder(pipe)
    learned = torch.randn(2, sum(prompts.widths), generator=torch.Generator().manual_seed(0))
    token_id = prompts.add_token("*a", torch.zeros_like(learned))
    after = prompts.add_token("*m", torch.ones(sum(prompts.widths)))
    assert after == token_id + 2  # the next id: where an off-by-one bound would reach
    table = pipe.text_encoder.get_input_embeddings()
    ids = torch.tensor([[49406, token_id, token_id + 1, after, 320, 49407]])
    handles = prompts.inject(token_id, lambda: learned)
    try:
        out = table(ids)[0]
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(out[1:3], learned[:, : prompts.widths[0]])
    torch.testing.assert_close(out[[0, 3, 4, 5]], table.weight[ids[0, [0, 3, 4, 5]]])
