"""Checkpoints applied to stock pipelines, λ sweeps, composition and the CLI, on the tiny preset."""

import json

import numpy as np
import pytest
import torch

from ostaf import apply, load_checkpoint
from ostaf.cli import main
from ostaf.config import GenerateConfig
from ostaf.errors import OstafError
from ostaf.generate import generate, sweep
from ostaf.models import load_pipeline
from ostaf.train import train
from tests.conftest import on_both_models, tiny_config, trained_once_per_model

STEPS = dict(num_inference_steps=3, output_type="np")


def images(pipe, prompt, seed=0, **kwargs):
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), **STEPS, **kwargs).images


@pytest.fixture(scope="module")
def trained_on(tmp_path_factory):
    """model → a lite appearance and a lite shape checkpoint on it, a few steps each (trained once per model)."""
    return trained_once_per_model(tmp_path_factory, ("appearance", "shape"), steps=3)


@pytest.fixture(scope="module")
def checkpoints(trained_on):
    return trained_on("tiny")


@on_both_models
def test_lambda_zero_without_placeholder_gives_base_images(trained_on, model):
    checkpoints = trained_on(model)
    base = images(load_pipeline(model), "a photo of a cat")
    pipe = load_pipeline(model)
    adapter = apply(pipe, checkpoints["appearance"], lam=0.0)
    assert np.array_equal(images(pipe, "a photo of a cat"), base)
    adapter.set_scale(1.0)
    assert not np.allclose(images(pipe, "a photo of a cat"), base, atol=1e-3)


@on_both_models
def test_trained_pipeline_equals_saved_then_applied(reference, tmp_path, model):
    trained = load_pipeline(model)
    train(tiny_config(reference, tmp_path / "run", steps=3, model=model), pipe=trained, progress=False)
    fresh = load_pipeline(model)
    apply(fresh, tmp_path / "run", lam=1.0)
    prompt = "a vase in the appearance of *a"
    assert np.array_equal(images(trained, prompt), images(fresh, prompt))


@on_both_models
def test_per_sample_lambda_batch_equals_separate_runs(trained_on, model):
    pipe = load_pipeline(model)
    adapter = apply(pipe, trained_on(model)["appearance"])
    prompt, lams = "a vase in the appearance of *a", [0.0, 0.5, 1.0]
    batched = sweep(pipe, [adapter], prompt, lams, [0, 1], num_steps=3, batch_size=6, progress=False)
    for lam in lams:
        single = sweep(pipe, [adapter], prompt, [lam], [0, 1], num_steps=3, batch_size=1, progress=False)
        for seed in (0, 1):
            a = np.asarray(batched.images[(lam, seed)], dtype=np.int16)
            b = np.asarray(single.images[(lam, seed)], dtype=np.int16)
            assert np.abs(a - b).max() <= 2  # uint8 images: float tolerance of the batched maths
    assert batched.grid.size[0] > 3 * 64 and batched.grid.size[1] > 2 * 64


@on_both_models
def test_shape_and_appearance_compose_in_one_prompt(trained_on, model):
    checkpoints = trained_on(model)
    pipe = load_pipeline(model)
    shape = apply(pipe, checkpoints["shape"], lam=1.0)
    appearance = apply(pipe, checkpoints["appearance"], lam=1.0)
    assert shape.processors.keys().isdisjoint(appearance.processors.keys())
    for tokenizer in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None) or pipe.tokenizer):  # SDXL: both read them
        ids = tokenizer("a cat in the shape of *m in the appearance of *a").input_ids
        assert {tokenizer.convert_tokens_to_ids(t) for t in ("*m", "*a")} <= set(ids)
    both = images(pipe, "a cat in the shape of *m in the appearance of *a")
    shape.set_scale(0.0)
    appearance_only = images(pipe, "a cat in the shape of *m in the appearance of *a")
    assert not np.allclose(both, appearance_only, atol=1e-3)


def test_checkpoint_from_other_architecture_is_refused(checkpoints, tmp_path):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from ostaf.presets import PRESETS

    base = load_pipeline("tiny")
    cfg = dict(PRESETS["tiny"].unet, block_out_channels=(32, 32))
    other = StableDiffusionPipeline(**{**base.components, "unet": UNet2DConditionModel(**cfg)})
    with pytest.raises(OstafError, match="another model"):
        apply(other, checkpoints["appearance"])
    # nothing half-applied: no offsets processors, no new token
    assert all(type(p).__name__ == "AttnProcessor2_0" for p in other.unet.attn_processors.values())
    assert "*a" not in other.tokenizer.get_vocab()


@pytest.mark.parametrize("trained,other", [("tiny", "tiny-sdxl"), ("tiny-sdxl", "tiny")])
def test_a_checkpoint_of_the_other_architecture_is_one_error(trained_on, trained, other):
    pipe = load_pipeline(other)
    with pytest.raises(OstafError, match=f"trained on an {'sdxl' if trained == 'tiny-sdxl' else 'sd1'} model"):
        apply(pipe, trained_on(trained)["appearance"])
    assert all(type(p).__name__ == "AttnProcessor2_0" for p in pipe.unet.attn_processors.values())
    assert "*a" not in pipe.tokenizer.get_vocab()


@pytest.mark.parametrize("tiny_pipe", ["tiny-sdxl"], indirect=True)
def test_the_sdxl_token_is_one_row_per_text_encoder_and_what_the_stock_pipeline_reads(trained_on, tiny_pipe):
    from ostaf.checkpoint import load_checkpoint

    ckpt = load_checkpoint(trained_on("tiny-sdxl")["appearance"])
    apply(tiny_pipe, ckpt)
    rows = [e.get_input_embeddings().weight[-1] for e in (tiny_pipe.text_encoder, tiny_pipe.text_encoder_2)]
    assert [r.shape[0] for r in rows] == [32, 48]  # the two encoders' widths
    assert torch.equal(torch.cat(rows), ckpt.tensors["token.embedding"])
    assert tiny_pipe.tokenizer.convert_tokens_to_ids("*a") == tiny_pipe.tokenizer_2.convert_tokens_to_ids("*a")


def test_pickle_and_missing_checkpoints_are_refused(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    torch.save({"x": torch.zeros(1)}, folder / "ostaf.safetensors")  # a pickle under the right name
    (folder / "ostaf.json").write_text(json.dumps({"format": "ostaf-checkpoint/1"}))
    with pytest.raises(OstafError, match="pickle.*refused"):
        load_checkpoint(folder)
    (folder / "ostaf.safetensors").write_bytes(b"\x00" * 12)  # truncated / not a tensor file
    with pytest.raises(OstafError, match="damaged"):
        load_checkpoint(folder)
    with pytest.raises(OstafError, match="not an OSTAF checkpoint"):
        load_checkpoint(tmp_path / "nothing")


def test_generate_writes_images_grids_and_index(checkpoints, tmp_path):
    config = GenerateConfig(
        ckpt=[str(checkpoints["appearance"])],
        prompt=["a cup in the appearance of *a"],
        lam=[0.0, 1.0],
        seeds=[0, 1],
        num_steps=2,
        out=str(tmp_path / "gen"),
        device="cpu",
    )
    results = generate(config, progress=False)
    index = json.loads((tmp_path / "gen" / "images.json").read_text())
    assert len(index["images"]) == 4 == len(results[0].images)
    for item in index["images"]:
        assert (tmp_path / "gen" / item["path"]).is_file()
    assert (tmp_path / "gen" / "a-cup-in-the-appearance-of-a" / "grid.png").is_file()
    assert not list((tmp_path / "gen").rglob("*.tmp"))


def test_generating_on_random_weights_says_so_once(checkpoints, tmp_path, caplog):
    config = dict(ckpt=[str(checkpoints["appearance"])], lam=[0.0, 1.0], seeds=[0], num_steps=1, device="cpu")
    with caplog.at_level("WARNING", logger="ostaf.generate"):
        generate(GenerateConfig(prompt=["a cup in the appearance of *a"], out=str(tmp_path / "a"), **config))
    notices = [r.getMessage() for r in caplog.records if "random weights" in r.getMessage()]
    assert len(notices) == 1 and notices[0].startswith("tiny has random weights")


def test_overlong_prompt_warns_and_a_cut_placeholder_is_an_error(checkpoints, tmp_path):
    config = dict(ckpt=[str(checkpoints["appearance"])], lam=[1.0], seeds=[0], num_steps=1, device="cpu")
    long = "a cup in the appearance of *a " + "with a very long tail of words " * 12
    with pytest.warns(UserWarning, match="CLIP reads the first 77"):
        generate(GenerateConfig(prompt=[long], out=str(tmp_path / "a"), **config), progress=False)
    cut = "a cup " + "with a very long tail of words " * 12 + "in the appearance of *a"
    with pytest.raises(OstafError, match="drops \\*a"):
        generate(GenerateConfig(prompt=[cut], out=str(tmp_path / "b"), **config), progress=False)


@pytest.mark.parametrize(
    "prompt,message",
    [
        ("a cup", "no placeholder"),
        ("a cup in the shape of *m", "learned only"),
    ],
)
def test_generate_checks_prompts_before_loading_anything(checkpoints, tmp_path, prompt, message):
    config = GenerateConfig(ckpt=[str(checkpoints["appearance"])], prompt=[prompt], out=str(tmp_path / "g"))
    with pytest.raises(OstafError, match=message):
        generate(config, progress=False)


@on_both_models
def test_cli_train_then_generate(checkpoints, tmp_path, capsys, model):
    out = tmp_path / "cli"
    ref = checkpoints["reference"]
    train_args = f"train --image {ref} --class-name dog --attribute style --steps 2 --device cpu --no-segment"
    assert main([*train_args.split(), "--model", model, "--out", str(out / "ckpt")]) == 0
    card = load_checkpoint(out / "ckpt").card
    assert card["token"] == "*s" and card["architecture"] == ("sdxl" if model == "tiny-sdxl" else "sd1")
    generate_args = ["generate", "--ckpt", str(out / "ckpt"), "--prompt", "a man snowboarding in the style of *s"]
    assert main([*generate_args, *"--lam 0 1 --seeds 3 --num-steps 2 --out".split(), str(out / "gen")]) == 0
    assert len(list((out / "gen").rglob("lam*_seed3.png"))) == 2
    missing = f"train --image {tmp_path / 'missing.png'} --class-name dog --no-segment --out {out / 'x'}"
    assert main(missing.split()) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "generate"])
def test_cli_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "--lr" in capsys.readouterr().out if command == "train" else "--lam" in capsys.readouterr().out
