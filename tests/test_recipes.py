"""The shipped recipes do what they say: `--recipe world disentangled` trains the placeholder alone, only on the
noisy band of the schedule, and generates one λ; `--recipe world views` fine-tunes the encoder's blocks and the
token with 8 textured captioned views, exactly as the world table measured it."""

from __future__ import annotations

import json
from unittest.mock import patch

import pytest
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
    """What the world table's `views+band+lambda` row measured is the recipe (one source), and the recipe trains
    the encoder's attention weights (no token, no adapter) with 8 views, each a named colour and texture, on the
    noisy three quarters of the schedule — the reference's steps and the views' alike."""
    from PIL import Image

    from ostaf.mechanisms import timesteps
    from ostaf.mechanisms.views import CaptionedViews, views_loss
    from ostaf.recipes import VIEWS
    from ostaf.world.methods import METHODS

    shipped = METHODS["views+band400+g2.5"]
    assert (shipped.train, shipped.generate) == (VIEWS.train, VIEWS.generate)
    at_five = METHODS["views+band400+lambda"]  # the rows measured at the experiment's guidance (5)
    assert at_five.train == VIEWS.train and at_five.generate == {"token_lambda": True}
    band = {k: v for k, v in VIEWS.train.items() if k != "steps"}  # the rows measured at the world's 200 steps
    assert METHODS["views+band+lambda"].train == band
    before = band | {"timestep_range": [0.0, 1.0]}  # the rows measured before the band
    assert METHODS["finetune+textured-views8"].train | {"timestep_range": [0.0, 1.0]} == before
    image = tmp_path / "ref.png"
    Image.fromarray(render(Factors("star", "red", "striped", "flat", 0.5, 0.5, 0.3)).image).save(image)
    argv = ["train", "--image", str(image), "--class-name", "object", "--attribute", "shape", "--model", "tiny"]
    argv += ["--out", str(tmp_path / "run"), "--device", "cpu", "--recipe", "world", "views"]
    config = config_from_args(TrainConfig, parsed(argv))
    assert (config.steps, config.lr, config.trainable, config.views, config.view_textures) == (
        400,
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
    real, drawn = timesteps.sample_timesteps, []

    def spy(*args):
        drawn.append(real(*args))
        return drawn[-1]

    with patch.object(timesteps, "sample_timesteps", spy):
        generator = torch.Generator().manual_seed(0)
        for _ in range(50):
            views_loss(setup, made, setup.mechanism(CaptionedViews).input_ids, generator)
            sample_batch(setup, generator)
    total = setup.noise_scheduler.config.num_train_timesteps
    assert len(drawn) == 100 and total // 4 <= int(torch.cat(drawn).min()) < total // 4 + 50  # the band, both
    flags = ["generate", "--ckpt", card(tmp_path / "ckpt", "shape"), "--prompt", "a cat in the shape of *m"]
    generate = config_from_args(GenerateConfig, parsed([*flags, "--recipe", "world", "views"]))
    assert generate.token_lambda and generate.lam == [0.0, 0.25, 0.5, 0.75, 1.0]  # λ: a strength, swept


def test_a_recipe_for_another_attribute_is_left_out_and_its_values_are_named_in_errors(tmp_path, capsys, caplog):
    """`--recipe world views` on an appearance: the shape-only recipe is left out (the world's settings hold) and
    the log says so; on a shape, an error about a value the recipe set says the flag came from the recipe (the
    user never typed --view-textures)."""
    from ostaf.cli import main

    image = tmp_path / "ref.png"
    synthetic_image().save(image)
    argv = ["train", "--image", str(image), "--class-name", "toy", "--model", "tiny", "--recipe", "world", "views"]
    with caplog.at_level("INFO", logger="ostaf.cli"):
        appearance = config_from_args(TrainConfig, parsed([*argv, "--attribute", "appearance"]))
    assert (appearance.views, appearance.view_textures, appearance.trainable, appearance.steps) == (
        0,
        False,
        "lite",
        200,
    )
    assert "recipe views is for shape only: not used for the appearance attribute" in caplog.text
    shape = [*argv, "--attribute", "shape", "--out", str(tmp_path / "run")]
    assert main([*shape, "--views", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "add --views N" in err and err.endswith(
        "(--view-textures: set by --recipe world+views)"
    )  # not --views: typed
    assert not (tmp_path / "run").exists()


def card(folder, attribute: str) -> str:
    """A checkpoint folder whose card names `attribute` (what `generate` reads before its real parse)."""
    from ostaf.checkpoint_format import CARD, CHECKPOINT_FORMAT, TENSORS

    folder.mkdir()
    (folder / CARD).write_text(json.dumps({"format": CHECKPOINT_FORMAT, "attribute": attribute}))
    (folder / TENSORS).write_bytes(b"")
    return str(folder)


def test_a_recipe_for_some_attributes_layers_in_for_their_items_only(tmp_path):
    """`--recipe world disentangled views appearance-views style-views` (the main job's): each attribute's items
    train with their own views and generate with λ as a strength — shapes the encoder's blocks, appearances the
    decoder's, styles the token alone at its own rate — in the pipeline (one resolved options file for every item)
    and in the CLI (`train --attribute`, `generate` from its checkpoint's attribute); a typed parameter and
    `extra_options` still win over the shape's recipe."""
    from ostaf.options import resolve_options

    recipe = ["world", "disentangled", "views", "appearance-views", "style-views"]
    resolved = resolve_options(recipe, {}, {})

    def train_of(attribute: str, options=resolved) -> TrainConfig:
        item = {"id": "x", "attribute": attribute, "class_name": "object", "prompts": []}
        return TrainConfig.for_item(item, options["train"], image="ref.png")  # what every pipeline step calls

    def generate_of(attribute: str) -> GenerateConfig:
        item = {"id": "x", "attribute": attribute, "prompts": ["a cat"]}
        return GenerateConfig.for_item(item, resolved["generate"], ckpt=["c"])

    shape = train_of("shape")
    assert (shape.trainable, shape.views, shape.view_textures, shape.timestep_range) == ("blocks", 8, True, [0.25, 1])
    assert (shape.steps, shape.lr, shape.segment) == (400, 1e-3, False)  # the recipe's steps, the world's rest
    look = train_of("appearance")
    assert (look.trainable, look.views, look.view_extend, look.view_textures) == ("blocks", 10, True, False)
    assert (look.steps, look.timestep_range) == (400, [0.25, 1])
    style = train_of("style")
    assert (style.steps, style.lr) == (400, 1e-2)  # the recipe's own rate, over the world's 1e-3
    assert (style.trainable, style.views, style.view_textures, style.timestep_range) == ("token", 10, False, [0.25, 1])
    assert generate_of("style").token_lambda and generate_of("appearance").token_lambda
    assert generate_of("shape").token_lambda and generate_of("shape").lam == generate_of("style").lam == [1.0]
    assert set(resolved["train"]["per_attribute"]) == {"shape", "appearance", "style"}  # only what differs, where
    assert set(resolved["train"]["per_attribute"]["shape"]) == {"trainable", "views", "view_textures", "steps"}
    assert set(resolved["train"]["per_attribute"]["appearance"]) == {"trainable", "views", "view_extend", "steps"}
    assert set(resolved["train"]["per_attribute"]["style"]) == {"views", "steps", "lr"}

    typed = resolve_options(recipe, {"train": {"view_loss_weight": 3.0}}, {"trainable": "lora"})
    assert (train_of("shape", typed).trainable, train_of("shape", typed).view_loss_weight) == ("lora", 3.0)
    assert train_of("shape", typed).views == 8 and train_of("style", typed).trainable == "lora"

    image = tmp_path / "ref.png"
    synthetic_image().save(image)
    argv = ["train", "--image", str(image), "--class-name", "object", "--model", "tiny", "--recipe", *recipe]
    assert config_from_args(TrainConfig, parsed([*argv, "--attribute", "shape"])).views == 8
    style_flags = config_from_args(TrainConfig, parsed([*argv, "--attribute", "style"]))
    assert (style_flags.trainable, style_flags.views, style_flags.lr) == ("token", 10, 1e-2)
    shape_and_look = recipe[:4]  # without style-views a style generates as the token recipe does: one λ, no knob
    for attribute, names, strength in (
        ("shape", shape_and_look, True),
        ("appearance", shape_and_look, True),
        ("style", shape_and_look, False),
        ("style", recipe, True),
    ):
        flags = ["generate", "--ckpt", card(tmp_path / f"{attribute}{len(names)}", attribute), "--prompt", "a cat"]
        assert config_from_args(GenerateConfig, parsed([*flags, "--recipe", *names])).token_lambda is strength


def test_the_parent_run_logs_what_a_recipe_changes_for_an_attribute(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from ostaf.options import resolve_options
    from ostaf.steps import start_pipeline_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run = start_pipeline_run("p", "tiny", resolve_options(["world", "disentangled", "views"], {}, {}))
    params = MlflowClient(uri).get_run(run).data.params
    assert (params["train.trainable"], params["train.per_attribute.shape.trainable"]) == ("token", "blocks")
    assert (params["train.views"], params["train.per_attribute.shape.views"]) == ("0", "8")
    assert params["generate.per_attribute.shape.token_lambda"] == "True"
    assert not any(k.startswith(("evaluate.per_attribute", "train.per_attribute.style")) for k in params)


def test_the_evaluate_step_reads_its_items_attribute_values(tmp_path, monkeypatch):
    """A recipe's evaluate values for one attribute reach that attribute's evaluate step, not the others'."""
    from ostaf import evaluate, recipes
    from ostaf.options import resolve_options
    from ostaf.steps import evaluate_item

    monkeypatch.setitem(
        recipes.RECIPES,
        "scored",
        recipes.Recipe("scored", "", evaluate={"metric_models": "tiny"}, attributes=("style",)),
    )
    options = resolve_options(["scored"], {}, {})["evaluate"]
    asked = []

    class Asked(Exception):
        """The options are what this test is about: stop before any model loads."""

    def record(attribute: str, spec: str):
        asked.append((attribute, spec))
        raise Asked

    monkeypatch.setattr(evaluate, "load_metric_models", record)
    for attribute in ("style", "shape"):
        (tmp_path / attribute).mkdir()
        (tmp_path / attribute / "item.json").write_text(json.dumps({"id": attribute, "attribute": attribute}))
        with pytest.raises(Asked):
            evaluate_item("", str(tmp_path / attribute), "tiny", options, "", str(tmp_path / "scores"))
    assert asked == [("style", "tiny"), ("shape", "none")]  # shape: the preset's default (no real weights)
