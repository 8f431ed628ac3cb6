"""`ostaf export`: a checkpoint at λ as a LoRA file + a textual-inversion embedding that stock diffusers loads.

The base pipeline is the `tiny` (or `tiny-sdxl`) preset rebuilt from the checkpoint's seed (ostaf builds presets);
what is loaded onto it — `load_lora_weights`, `load_textual_inversion` — is diffusers' own code only.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
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
    ckpt = train(tiny_config(reference, tmp_path / "ckpt", steps=2, trainable="lora", lr=1e-2), progress=False).out
    report = export(ExportConfig(ckpt=str(ckpt), out=str(tmp_path / "l.safetensors"), rank=4))
    assert report.error < 1e-6
    assert np.abs(stock(ckpt, report) - ours(ckpt, 1.0)).max() <= 2


def test_a_token_only_checkpoint_exports_its_embedding_alone(tmp_path, reference):
    ckpt = train(tiny_config(reference, tmp_path / "t", steps=1, trainable="token"), progress=False).out
    report = export(ExportConfig(ckpt=str(ckpt), out=str(tmp_path / "t.safetensors")))
    assert report.lora == "" and not (tmp_path / "t.safetensors").exists() and report.rank == 0
    pipe = load_base_pipeline(load_checkpoint(ckpt))
    pipe.load_textual_inversion(report.embedding, token="*a")
    row = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids("*a")]
    torch.testing.assert_close(row, load_checkpoint(ckpt).tensors["token.embedding"])


def test_what_a_lora_cannot_carry_and_bad_options_are_one_clear_error(tmp_path, reference):
    paper = train(tiny_config(reference, tmp_path / "paper", steps=1, trainable="paper"), progress=False).out
    with pytest.raises(OstafError, match="cannot carry"):
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
