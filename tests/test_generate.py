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
from tests.conftest import tiny_config

STEPS = dict(num_inference_steps=3, output_type="np")


def images(pipe, prompt, seed=0, **kwargs):
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), **STEPS, **kwargs).images


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A lite appearance and a lite shape checkpoint, a few steps each."""
    root = tmp_path_factory.mktemp("ckpts")
    from tests.conftest import synthetic_image

    ref = root / "ref.png"
    synthetic_image().save(ref)
    appearance = train(tiny_config(ref, root / "appearance", steps=3, attribute="appearance"), progress=False).out
    shape = train(tiny_config(ref, root / "shape", steps=3, attribute="shape"), progress=False).out
    return {"appearance": appearance, "shape": shape, "reference": ref}


def test_lambda_zero_without_placeholder_gives_base_images(checkpoints):
    base = images(load_pipeline("tiny"), "a photo of a cat")
    pipe = load_pipeline("tiny")
    adapter = apply(pipe, checkpoints["appearance"], lam=0.0)
    assert np.array_equal(images(pipe, "a photo of a cat"), base)
    adapter.set_scale(1.0)
    assert not np.allclose(images(pipe, "a photo of a cat"), base, atol=1e-3)


def test_trained_pipeline_equals_saved_then_applied(checkpoints, reference, tmp_path):
    trained = load_pipeline("tiny")
    train(tiny_config(reference, tmp_path / "run", steps=3), pipe=trained, progress=False)
    fresh = load_pipeline("tiny")
    apply(fresh, tmp_path / "run", lam=1.0)
    prompt = "a vase in the appearance of *a"
    assert np.array_equal(images(trained, prompt), images(fresh, prompt))


def test_per_sample_lambda_batch_equals_separate_runs(checkpoints):
    pipe = load_pipeline("tiny")
    adapter = apply(pipe, checkpoints["appearance"])
    prompt, lams = "a vase in the appearance of *a", [0.0, 0.5, 1.0]
    batched = sweep(pipe, [adapter], prompt, lams, [0, 1], num_steps=3, batch_size=6, progress=False)
    for lam in lams:
        single = sweep(pipe, [adapter], prompt, [lam], [0, 1], num_steps=3, batch_size=1, progress=False)
        for seed in (0, 1):
            a = np.asarray(batched.images[(lam, seed)], dtype=np.int16)
            b = np.asarray(single.images[(lam, seed)], dtype=np.int16)
            assert np.abs(a - b).max() <= 2  # uint8 images: float tolerance of the batched maths
    assert batched.grid.size[0] > 3 * 64 and batched.grid.size[1] > 2 * 64


def test_shape_and_appearance_compose_in_one_prompt(checkpoints):
    pipe = load_pipeline("tiny")
    shape = apply(pipe, checkpoints["shape"], lam=1.0)
    appearance = apply(pipe, checkpoints["appearance"], lam=1.0)
    assert shape.processors.keys().isdisjoint(appearance.processors.keys())
    ids = pipe.tokenizer("a cat in the shape of *m in the appearance of *a").input_ids
    assert {pipe.tokenizer.convert_tokens_to_ids(t) for t in ("*m", "*a")} <= set(ids)
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


def test_cli_train_then_generate(checkpoints, tmp_path, capsys):
    out = tmp_path / "cli"
    ref = checkpoints["reference"]
    train_args = f"train --image {ref} --class-name dog --attribute style --steps 2 --device cpu --no-segment"
    assert main([*train_args.split(), "--out", str(out / "ckpt")]) == 0
    assert load_checkpoint(out / "ckpt").card["token"] == "*s"
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
