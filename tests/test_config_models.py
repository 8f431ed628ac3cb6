"""Configs are the single source of options; models load offline or fail with a clear message."""

import argparse
import os
from dataclasses import fields

import pytest
import torch
from diffusers import UNet2DConditionModel

from ostaf.cli import build_parser
from ostaf.config import GenerateConfig, TrainConfig
from ostaf.errors import OstafError
from ostaf.flags import add_config_arguments, config_from_args
from ostaf.image_encoder import load_image_encoder
from ostaf.model_spec import model_resolution
from ostaf.models import load_pipeline, native_resolution, vae_encode
from ostaf.presets import PRESETS
from tests.conftest import on_both_models


@pytest.mark.parametrize("cls", [TrainConfig, GenerateConfig])
def test_every_config_field_is_a_flag(cls):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, cls)
    dests = {a.dest for a in parser._actions if a.dest != "help"}
    assert dests == {f.name for f in fields(cls)}


def test_flags_round_trip_to_the_config(reference, tmp_path):
    args = build_parser().parse_args(
        [
            "train",
            "--image",
            str(reference),
            "--class-name",
            "cat",
            "--attribute",
            "shape",
            "--no-train-token",
            "--zero-init",
            "--lr",
            "2e-5",
        ]
    )
    config = config_from_args(TrainConfig, args)
    assert (config.attribute, config.train_token, config.zero_init, config.lr) == ("shape", False, True, 2e-5)
    assert config.offsets_config().parts == ("encoder",)
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_generate_flags_collect_repeated_ckpt_and_prompt():
    args = build_parser().parse_args(
        [
            "generate",
            "--ckpt",
            "a",
            "--ckpt",
            "b",
            "--prompt",
            "x *a",
            "--prompt",
            "y *m",
            "--lam",
            "0",
            "0.5",
            "--seeds",
            "1",
            "2",
            "3",
        ]
    )
    config = config_from_args(GenerateConfig, args)
    assert config.ckpt == ["a", "b"] and config.prompt == ["x *a", "y *m"]
    assert config.lam == [0.0, 0.5] and config.seeds == [1, 2, 3]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(attribute="colour"), "unknown attribute"),
        (dict(class_name="  "), "class name is empty"),
        (dict(steps=0), "steps must be > 0"),
        (dict(lr=float("nan")), "finite"),
        (dict(grad_accum=-1), "grad_accum"),
    ],
)
def test_bad_train_options_raise_one_clear_error(overrides, message):
    values = dict(image="x.png", class_name="dog") | overrides
    with pytest.raises(OstafError, match=message):
        TrainConfig(**values)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(lam=[float("inf")]), "finite"),
        (dict(seeds=[1.5]), "integers"),
        (dict(num_steps=0), "num_steps"),
        (dict(ckpt=[]), "no checkpoint"),
    ],
)
def test_bad_generate_options_raise_one_clear_error(overrides, message):
    values = dict(ckpt=["c"], prompt=["a *a"]) | overrides
    with pytest.raises(OstafError, match=message):
        GenerateConfig(**values)


def test_unknown_config_keys_are_named():
    with pytest.raises(OstafError, match="no option"):
        TrainConfig.from_dict({"image": "x", "class_name": "dog", "learning_rate": 1})


def test_tiny_preset_is_seeded():
    a, b, c = load_pipeline("tiny", seed=0), load_pipeline("tiny", seed=0), load_pipeline("tiny", seed=1)
    wa, wb, wc = (p.unet.conv_in.weight for p in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_sd14_random_has_the_sd14_architecture():
    with torch.device("meta"):
        unet = UNet2DConditionModel(**PRESETS["sd14-random"].unet)
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
    names = [n for n in unet.attn_processors if n.startswith("up_blocks.")]
    assert len(names) == 18 and {n.split(".")[1] for n in names} == {"1", "2", "3"}


def test_sdxl_random_has_the_sdxl_base_architecture():
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    preset = PRESETS["sdxl-random"]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**preset.unet)
        first = CLIPTextModel(CLIPTextConfig(**preset.text_encoder))
        second = CLIPTextModelWithProjection(CLIPTextConfig(**preset.text_encoder_2))
    counts = [sum(p.numel() for p in m.parameters()) for m in (unet, first, second)]
    assert counts == [2_567_463_684, 123_060_480, 694_659_840]  # SDXL-base's U-Net, CLIP-L, OpenCLIP bigG
    blocks = {".".join(n.split(".")[:2]) for n in unet.attn_processors}
    assert blocks == {"down_blocks.1", "down_blocks.2", "mid_block.attentions", "up_blocks.0", "up_blocks.1"}
    assert preset.resolution == 1024 and preset.vae["force_upcast"]  # SDXL's VAE overflows in fp16


@on_both_models
def test_local_diffusers_folder_loads_offline(tmp_path, monkeypatch, model):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    saved = load_pipeline(model, seed=3)
    saved.save_pretrained(tmp_path / "sd", safe_serialization=True)
    loaded = load_pipeline(str(tmp_path / "sd"))
    assert type(loaded) is type(saved)  # SDXL folders load as StableDiffusionXLPipeline, from model_index.json
    assert torch.equal(loaded.unet.conv_in.weight, saved.unet.conv_in.weight)
    assert loaded.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert model_resolution(str(tmp_path / "sd")) == native_resolution(loaded) == 64


@on_both_models
def test_folder_without_tokenizer_uses_the_offline_one(tmp_path, model):
    import shutil

    load_pipeline(model).save_pretrained(tmp_path / "sd")
    names = [n for n in ("tokenizer", "tokenizer_2") if (tmp_path / "sd" / n).is_dir()]
    assert names == (["tokenizer", "tokenizer_2"] if model == "tiny-sdxl" else ["tokenizer"])
    for name in names:
        shutil.rmtree(tmp_path / "sd" / name)
    loaded = load_pipeline(str(tmp_path / "sd"))
    for name in names:
        assert len(getattr(loaded, name)) == 49408
    if model == "tiny-sdxl":  # the second tokenizer pads as OpenCLIP's does: "!" (id 0)
        assert loaded.tokenizer_2("a", padding="max_length", max_length=5).input_ids == [49406, 320, 49407, 0, 0]


@pytest.mark.parametrize("model", ["/no/such/folder", "CompVis/stable-diffusion-v1-4"])
def test_missing_weights_say_where_to_put_them(model, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(OstafError, match="Nothing is downloaded"):
        load_pipeline(model)


def test_folder_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(OstafError, match="model_index.json"):
        load_pipeline(str(tmp_path))


def test_missing_clip_weights_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("OSTAF_CLIP_WEIGHTS", str(tmp_path / "missing.safetensors"))
    with pytest.raises(OstafError, match="--token-init word"):
        load_image_encoder("/some/real/model")


@pytest.mark.parametrize("force_upcast", [True, False])
def test_the_vae_encodes_in_fp32_where_it_overflows_in_fp16(force_upcast):
    """A VAE whose config says it overflows in fp16 (force_upcast: SDXL's, diffusers' default) encodes a reference
    in fp32 even in an fp16 pipeline, and stays fp16 after; an fp16-safe one (force_upcast false) encodes in fp16."""
    vae = load_pipeline("tiny-sdxl").vae.to(torch.float16)
    vae.register_to_config(force_upcast=force_upcast)
    seen: list[torch.dtype] = []
    vae.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    posterior = vae_encode(vae, torch.zeros(1, 3, 64, 64))
    assert seen == [torch.float32 if force_upcast else torch.float16]
    assert vae.dtype == torch.float16 and torch.isfinite(posterior.mean).all()


@on_both_models
def test_a_hub_id_loads_from_the_offline_cache_as_its_own_pipeline_class(tmp_path, model):
    """A hub snapshot already in the Hugging Face cache loads with no network, SDXL as StableDiffusionXLPipeline
    (read from the cached model_index.json); in a subprocess, since the cache location is read at import."""
    import subprocess
    import sys

    snapshot = tmp_path / "hf" / "hub" / "models--someone--tiny" / "snapshots" / "0123abc"
    load_pipeline(model, seed=5).save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abc")
    code = (
        "from ostaf.models import load_pipeline; p = load_pipeline('someone/tiny'); "
        "print(type(p).__name__, p.unet.conv_in.weight.sum().item())"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    name, total = done.stdout.split()
    expected = load_pipeline(model, seed=5)
    assert name == type(expected).__name__ and float(total) == expected.unet.conv_in.weight.sum().item()
