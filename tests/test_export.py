"""`ostaf export`: a checkpoint at λ as a LoRA file + a textual-inversion embedding that stock diffusers loads.

The base pipeline is the `tiny` (or `tiny-sdxl`) preset rebuilt from the checkpoint's seed (ostaf builds presets);
what is loaded onto it — `load_lora_weights`, `load_textual_inversion` — is diffusers' own code only.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ostaf.checkpoint import apply, load_base_pipeline, load_checkpoint
from ostaf.cli import main
from ostaf.conditioning import PromptEncoder
from ostaf.config import ExportConfig
from ostaf.errors import OstafError
from ostaf.export import export, relative_error, svd, weight_deltas
from ostaf.train import train
from tests.conftest import on_both_models, tiny_config, trained_once_per_model

PROMPT = "a vase in the appearance of *a"


def image(pipe, prompt=PROMPT) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    out = pipe(prompt, generator=generator, num_inference_steps=3, guidance_scale=5.0, output_type="np")
    return out.images[0] * 255


@torch.no_grad()
def noise_prediction(pipe) -> torch.Tensor:
    """One U-Net forward on fixed latents: more sensitive than 3 denoising steps of random weights."""
    cond = PromptEncoder(pipe).at_size(PROMPT, 64)
    size = pipe.unet.config.sample_size
    latents = torch.randn((1, 4, size, size), generator=torch.Generator().manual_seed(0))
    return pipe.unet(latents, torch.tensor([500]), **cond.unet_kwargs()).sample


def load_embedding(pipe, report) -> None:
    """What the CLI tells a user to run: one `load_textual_inversion`, or on SDXL one per text encoder."""
    if report.architecture != "sdxl":
        pipe.load_textual_inversion(report.embedding, token=report.token)
        return
    rows = load_file(report.embedding)
    assert set(rows) == {"clip_l", "clip_g"}  # SDXL's two-encoder embedding format
    pipe.load_textual_inversion(
        rows["clip_l"], token=report.token, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
    )
    pipe.load_textual_inversion(
        rows["clip_g"], token=report.token, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
    )


def ours(ckpt_dir, lam: float) -> np.ndarray:
    ckpt = load_checkpoint(ckpt_dir)
    pipe = load_base_pipeline(ckpt)
    apply(pipe, ckpt, lam)
    return image(pipe)


def stock(ckpt_dir, report) -> np.ndarray:
    pipe = load_base_pipeline(load_checkpoint(ckpt_dir))
    pipe.load_lora_weights(report.lora)
    load_embedding(pipe, report)
    return image(pipe)


@pytest.fixture(scope="module")
def lite_on(tmp_path_factory):
    """model → a checkpoint of offsets with the authors' random init (ΔW ≠ 0): a full-rank weight change."""
    made = trained_once_per_model(tmp_path_factory, ("appearance",), steps=2)
    return lambda model: made(model)["appearance"]


@pytest.fixture(scope="module")
def lite_ckpt(lite_on):
    return lite_on("tiny")


@on_both_models
@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
def test_full_rank_loads_in_stock_diffusers_and_matches_apply(lite_on, tmp_path, fmt, model):
    lite_ckpt = lite_on(model)
    lam = 0.7
    report = export(ExportConfig(ckpt=str(lite_ckpt), out=str(tmp_path / "x.safetensors"), lam=lam, format=fmt))
    assert report.error < 1e-6
    prefix = {"kohya": "lora_unet_", "diffusers": "unet."}[fmt]  # the file is in the format asked for
    assert all(key.startswith(prefix) for key in load_file(report.lora))
    assert np.abs(stock(lite_ckpt, report) - ours(lite_ckpt, lam)).max() <= 2  # ≤ 2/255
    ckpt = load_checkpoint(lite_ckpt)
    applied, with_lora, token_only = (load_base_pipeline(ckpt) for _ in range(3))
    apply(applied, ckpt, lam)
    with_lora.load_lora_weights(report.lora)
    for pipe in (with_lora, token_only):
        load_embedding(pipe, report)
    target = noise_prediction(applied)
    exported_gap = (noise_prediction(with_lora) - target).abs().max()
    assert exported_gap < 1e-4 * target.abs().max()
    assert (noise_prediction(token_only) - target).abs().max() > 100 * exported_gap  # the LoRA carries the offsets


def test_error_falls_with_rank_and_max_error_picks_the_smallest_rank(lite_ckpt, tmp_path):
    full = export(ExportConfig(ckpt=str(lite_ckpt), out=str(tmp_path / "full.safetensors")))
    assert list(full.error_vs_rank) == [r for r in (1, 2, 4, 8, 16, 32, 64) if r < full.rank] + [full.rank]
    assert full.format == "diffusers" and full.lora == str(tmp_path / "full.safetensors")
    errors = list(full.error_vs_rank.values())
    assert errors == sorted(errors, reverse=True) and errors[0] > 0.1 and errors[-1] < 1e-6
    picked = export(ExportConfig(ckpt=str(lite_ckpt), out=str(tmp_path / "p.safetensors"), max_error=0.3))
    assert max(picked.layers.values()) <= 0.3 and picked.rank < full.rank
    ckpt = load_checkpoint(lite_ckpt)
    pipe = load_base_pipeline(ckpt)
    deltas = weight_deltas(pipe, apply(pipe, ckpt, 1.0), 1.0)
    assert any(relative_error(svd(d), picked.rank - 1) > 0.3 for d in deltas.values())  # one less is too few
    saved = json.loads((tmp_path / "p.report.json").read_text())
    assert saved["rank"] == picked.rank and set(saved["layers"]) == set(picked.layers)
    low = export(ExportConfig(ckpt=str(lite_ckpt), out=str(tmp_path / "r1.safetensors"), rank=1))
    assert (
        np.abs(stock(lite_ckpt, low) - ours(lite_ckpt, 1.0)).max()
        > np.abs(stock(lite_ckpt, full) - ours(lite_ckpt, 1.0)).max()
    )


def test_a_lora_checkpoint_is_exact_at_its_own_rank(tmp_path, reference):
    """At λ = 1 and at λ = 0.5 (the LoRA's scale: B·A halved), the exported file gives ostaf's own image."""
    ckpt = train(tiny_config(reference, tmp_path / "ckpt", steps=2, trainable="lora", lr=1e-2), progress=False).out
    report = export(ExportConfig(ckpt=str(ckpt), out=str(tmp_path / "l.safetensors"), rank=4))
    assert report.error < 1e-6
    assert np.abs(stock(ckpt, report) - ours(ckpt, 1.0)).max() <= 2
    half = export(ExportConfig(ckpt=str(ckpt), out=str(tmp_path / "h.safetensors"), rank=4, lam=0.5))
    with safe_open(half.lora, "pt") as written:  # what the file says it is, for a reader without the report
        assert written.metadata() == {"ostaf.token": "*a", "ostaf.lam": "0.5", "ostaf.rank": "4"}
    loaded = load_checkpoint(ckpt)
    at_half, at_one, with_lora = (load_base_pipeline(loaded) for _ in range(3))
    apply(at_half, loaded, 0.5)
    apply(at_one, loaded, 1.0)
    with_lora.load_lora_weights(half.lora)
    load_embedding(with_lora, half)
    target = noise_prediction(at_half)
    exported_gap = (noise_prediction(with_lora) - target).abs().max()
    assert exported_gap < 1e-4 * target.abs().max()
    assert (noise_prediction(at_one) - target).abs().max() > 100 * exported_gap  # λ = 0.5 is not λ = 1


def test_a_token_only_checkpoint_exports_its_embedding_alone(tmp_path, reference):
    ckpt = train(tiny_config(reference, tmp_path / "t", steps=1, trainable="token"), progress=False).out
    report = export(ExportConfig(ckpt=str(ckpt), out=str(tmp_path / "t.safetensors")))
    assert report.lora == "" and not (tmp_path / "t.safetensors").exists() and report.rank == 0
    assert report.embedding == str(tmp_path / "t.embedding.safetensors") and report.error_vs_rank == {}
    assert report.token == "*a"  # the word to load the embedding under (stock loaders also read it from the file)
    width = load_checkpoint(ckpt).tensors["token.embedding"].shape[-1]
    assert load_file(report.embedding)["*a"].shape == (1, width)  # {token: (N, D)}, N = 1 vector
    pipe = load_base_pipeline(load_checkpoint(ckpt))
    pipe.load_textual_inversion(report.embedding, token="*a")
    row = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids("*a")]
    torch.testing.assert_close(row, load_checkpoint(ckpt).tensors["token.embedding"])
    for option in ({"rank": 4}, {"max_error": 0.1}):  # a LoRA's settings with no LoRA to give them: refused
        out = tmp_path / "again.safetensors"
        with pytest.raises(OstafError, match="token-only checkpoint.*drop them"):
            export(ExportConfig(ckpt=str(ckpt), out=str(out), **option))
        assert not out.with_name("again.embedding.safetensors").exists()


def test_what_a_lora_cannot_carry_and_bad_options_are_one_clear_error(tmp_path, reference):
    paper = train(tiny_config(reference, tmp_path / "paper", steps=1, trainable="paper"), progress=False).out
    with pytest.raises(OstafError, match=re.escape(str(paper)) + " also trained .* cannot carry"):  # names it
        export(ExportConfig(ckpt=str(paper), out=str(tmp_path / "x.safetensors")))
    assert not (tmp_path / "x.safetensors").exists()
    with pytest.raises(OstafError, match=".safetensors"):
        ExportConfig(ckpt=str(paper), out=str(tmp_path / "x.bin"))
    with pytest.raises(OstafError, match="not both"):
        ExportConfig(ckpt=str(paper), out=str(tmp_path / "x.safetensors"), rank=2, max_error=0.1)


@on_both_models
def test_the_cli_prints_error_vs_rank_and_how_to_load(lite_on, tmp_path, capsys, model):
    out = tmp_path / "cli.safetensors"
    assert main(["export", "--ckpt", str(lite_on(model)), "--out", str(out), "--rank", "8"]) == 0
    text = capsys.readouterr().out
    assert "← written" in text and "load_lora_weights" in text and out.exists()
    assert ("text_encoder=pipe.text_encoder_2" in text) == (model == "tiny-sdxl")  # SDXL: one call per encoder


def test_the_error_rank_and_factors_are_the_truncation_computed_by_hand():
    """The reported errors are ‖ΔW − B_r A_r‖_F / ‖ΔW‖_F of the factors written, per layer and over all layers, on
    non-square layers of different ranks; the picked rank is the smallest one under the bound in every layer; a
    layer of lower rank is padded with zeros to the file's one rank; kohya's keys carry alpha = rank."""
    from ostaf.export import lora_state, overall_error, pick_rank

    generator = torch.Generator().manual_seed(0)
    deltas = {  # rank 8 (8 × 12) and rank 3 (16 × 5: a 3-dimensional product)
        "a.to_k": torch.randn(8, 12, generator=generator, dtype=torch.float64).float(),
        "b.to_v": (torch.randn(16, 3, generator=generator) @ torch.randn(3, 5, generator=generator)),
    }
    deltas["a.to_k"][:, :6] *= 0.1  # a spectrum that falls
    factors = {name: svd(d) for name, d in deltas.items()}
    for rank in (1, 2, 4, 8):
        written = lora_state(factors, rank, "diffusers")
        lost = total = 0.0
        for name, delta in deltas.items():
            up, down = written[f"unet.{name}.lora_B.weight"], written[f"unet.{name}.lora_A.weight"]
            assert up.shape == (delta.shape[0], rank) and down.shape == (rank, delta.shape[1])  # one rank in the file
            gap = float((delta.double() - up.double() @ down.double()).norm() ** 2)
            assert relative_error(factors[name], rank) == pytest.approx(
                (gap / float(delta.norm() ** 2)) ** 0.5, abs=1e-6
            )
            lost, total = lost + gap, total + float(delta.norm() ** 2)
        assert overall_error(factors, rank) == pytest.approx((lost / total) ** 0.5, abs=1e-6)
    assert relative_error(factors["b.to_v"], 3) < 1e-6 < relative_error(factors["b.to_v"], 2)
    bound = 0.5 * (relative_error(factors["a.to_k"], 2) + relative_error(factors["a.to_k"], 3))  # between ranks 2 and 3
    assert pick_rank(factors, 8, bound) == 3 and pick_rank(factors, 8, 0.0) == 8  # 0: the rank asked for
    assert pick_rank(factors, 8, 1e-9) == 8  # the full-rank layer needs all of its 8 (the other one 3)
    assert pick_rank(factors, 8, 1.0) == 1  # any rank is under an error of 1: the smallest there is
    seven = torch.randn(8, 7, generator=generator) @ torch.randn(7, 8, generator=generator)  # rank 7 of 8
    assert pick_rank({"c.to_q": svd(seven)}, 8, 1e-6) == 7
    kohya = lora_state(factors, 2, "kohya")
    assert set(kohya) == {
        f"lora_unet_{n}_to_{p}.{k}"
        for n, p in (("a", "k"), ("b", "v"))
        for k in ("lora_down.weight", "lora_up.weight", "alpha")
    }
    assert int(kohya["lora_unet_a_to_k.alpha"]) == 2 and torch.equal(
        kohya["lora_unet_a_to_k.lora_up.weight"], lora_state(factors, 2, "diffusers")["unet.a.to_k.lora_B.weight"]
    )
    assert relative_error(svd(torch.zeros(3, 4)), 1) == 0.0 and overall_error({"z": svd(torch.zeros(3, 4))}, 1) == 0.0


def test_max_error_accepts_a_rank_whose_error_equals_it():
    """`--max-error e` picks the smallest rank whose error is ≤ e in every layer: at an error of exactly e that rank
    is taken, not the next (singular values 4 and 3: rank 1 loses √(9/25), rank 2 nothing)."""
    from ostaf.export import pick_rank

    layer = (None, torch.tensor([4.0, 3.0], dtype=torch.float64), None)
    exact = relative_error(layer, 1)
    assert exact == pytest.approx(0.6)
    assert pick_rank({"a.to_q": layer}, 8, exact) == 1
    assert pick_rank({"a.to_q": layer}, 8, exact - 1e-9) == 2
    assert pick_rank({"a.to_q": layer}, 8, 0.0) == 8  # no --max-error: the asked rank
