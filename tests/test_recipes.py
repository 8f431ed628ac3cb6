"""The shipped recipes do what they say: `--recipe world disentangled` trains the placeholder alone, only on the
noisy band of the schedule, and generates one λ."""

from __future__ import annotations

import torch

from ostaf.cli import build_parser, recipe_of
from ostaf.config import GenerateConfig, TrainConfig
from ostaf.flags import config_from_args
from ostaf.train import prepare, sample_batch
from tests.conftest import synthetic_image


def parsed(argv: list[str]):
    return build_parser(recipe_of(argv)).parse_args(argv)


def test_the_disentangled_recipe_trains_only_the_token_and_only_in_its_band(tmp_path):
    image = tmp_path / "ref.png"
    synthetic_image().save(image)
    argv = ["train", "--image", str(image), "--class-name", "object", "--attribute", "shape", "--model", "tiny"]
    argv += ["--out", str(tmp_path / "run"), "--device", "cpu", "--recipe", "world", "disentangled"]
    config = config_from_args(TrainConfig, parsed(argv))
    setup = prepare(config)
    token = {id(p) for p in setup.token.parameters()}
    trained = [p for p in setup.trainable if p.requires_grad]
    assert trained and all(id(p) in token for p in trained)  # the placeholder alone: no adapter, no U-Net weight
    assert setup.adapter is None and not any(p.requires_grad for p in setup.unet.parameters())
    generator = torch.Generator().manual_seed(0)
    drawn = torch.cat([sample_batch(setup, generator).timesteps for _ in range(400)])
    total = setup.noise_scheduler.config.num_train_timesteps
    assert total // 4 <= int(drawn.min()) < total // 4 + 50 and total - 50 < int(drawn.max()) < total  # all of the band
    assert (config.steps, config.lr, config.token_init) == (200, 1e-3, "word")  # the world's settings underneath
    flags = ["generate", "--ckpt", str(tmp_path / "run"), "--prompt", "a cat in the shape of *m"]
    generate = config_from_args(GenerateConfig, parsed([*flags, "--recipe", "world", "disentangled"]))
    assert generate.lam == [1.0]  # a token: one λ is all there is to render
