"""The shipped recipes do what they say: `--recipe world disentangled` trains the placeholder alone, only on the
noisy band of the schedule, and generates one λ; `--recipe world views` fine-tunes the encoder's blocks and the
token with 8 textured captioned views, exactly as the world table measured it."""

from __future__ import annotations

import torch

from ostaf.cli import build_parser, recipe_of
from ostaf.config import GenerateConfig, TrainConfig
from ostaf.flags import config_from_args
from ostaf.train import prepare, sample_batch
from ostaf.world.generator import Factors, render
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


def test_the_views_recipe_fine_tunes_the_encoder_with_eight_textured_views_as_measured(tmp_path):
    """What the world table's `finetune+textured-views8` row measured is the recipe (one source), and the recipe
    trains the encoder's attention weights (no token, no adapter) with 8 views, each a named colour and texture."""
    from PIL import Image

    from ostaf.mechanisms.views import CaptionedViews
    from ostaf.recipes import VIEWS
    from ostaf.world.methods import METHODS

    assert METHODS["finetune+textured-views8"].train == VIEWS.train
    assert (METHODS["views+lambda"].train, METHODS["views+lambda"].generate) == (VIEWS.train, VIEWS.generate)
    image = tmp_path / "ref.png"
    Image.fromarray(render(Factors("star", "red", "striped", "flat", 0.5, 0.5, 0.3)).image).save(image)
    argv = ["train", "--image", str(image), "--class-name", "object", "--attribute", "shape", "--model", "tiny"]
    argv += ["--out", str(tmp_path / "run"), "--device", "cpu", "--recipe", "world", "views"]
    config = config_from_args(TrainConfig, parsed(argv))
    assert (config.steps, config.lr, config.trainable, config.views, config.view_textures) == (
        200,
        1e-3,
        "blocks",
        8,
        True,
    )
    setup = prepare(config)
    names = {n for n, p in setup.unet.named_parameters() if p.requires_grad}
    assert names and all(n.startswith("down_blocks.") for n in names)  # the encoder's blocks, nothing else
    assert setup.adapter is None and all(p.requires_grad for p in setup.token.parameters())  # and the token
    made = setup.mechanism(CaptionedViews).views
    assert len(made.words) == 8 and len({w.split()[1] for w in made.words}) == 4  # 8 colours, every texture
    flags = ["generate", "--ckpt", str(tmp_path / "run"), "--prompt", "a cat in the shape of *m"]
    generate = config_from_args(GenerateConfig, parsed([*flags, "--recipe", "world", "views"]))
    assert generate.token_lambda and generate.lam == [0.0, 0.25, 0.5, 0.75, 1.0]  # λ: a strength, swept


def test_a_recipe_for_another_attribute_is_one_error_naming_the_recipe(tmp_path, capsys):
    """`--recipe views` on an appearance: refused before any work, and the error says the flag came from the
    recipe (the user never typed --view-textures)."""
    from ostaf.cli import main

    image = tmp_path / "ref.png"
    synthetic_image().save(image)
    argv = ["train", "--image", str(image), "--class-name", "toy", "--attribute", "appearance", "--model", "tiny"]
    assert main([*argv, "--out", str(tmp_path / "run"), "--recipe", "world", "views"]) == 2
    err = capsys.readouterr().err.strip()
    assert "drop --view-textures" in err and err.endswith("(--view-textures: set by --recipe world+views)")
    assert not (tmp_path / "run").exists()
