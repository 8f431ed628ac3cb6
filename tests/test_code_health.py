"""One home for each fact: typed options, the base model a checkpoint records, run lifecycles, registries,
and the library working from an installed package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ostaf import tracking
from ostaf.checkpoint import apply, load_checkpoint
from ostaf.cli import main
from ostaf.config import GenerateConfig, TrainConfig, per_item_fields, shared_defaults, validate_options
from ostaf.errors import OstafError
from ostaf.models import load_pipeline
from ostaf.options import typed
from tests.conftest import synthetic_image

REPO = Path(__file__).resolve().parents[1]


def test_per_item_fields_are_field_metadata():
    assert per_item_fields(TrainConfig) == ("image", "class_name", "attribute", "model", "out")
    assert per_item_fields(GenerateConfig) == ("ckpt", "prompt", "out", "model", "reference_image")
    assert not set(shared_defaults(TrainConfig)) & set(per_item_fields(TrainConfig))


def test_for_item_merges_shared_options_with_the_items_own_fields():
    item = {"id": "x", "class_name": "dog", "attribute": "shape", "prompts": ["a cat in the shape of *m"]}
    config = TrainConfig.for_item(item, {"steps": 7}, image="ref.png", out="o", model="tiny")
    assert (config.class_name, config.attribute, config.steps, config.lr) == ("dog", "shape", 7, 1e-6)
    gen = GenerateConfig.for_item(item, {"lam": [0.5]}, ckpt=["c"], out="g")
    assert gen.prompt == item["prompts"] and gen.lam == [0.5]
    with pytest.raises(OstafError, match="set per item"):
        TrainConfig.for_item(item, {"image": "sneaky.png"}, out="o")


@pytest.mark.parametrize(
    "options,message",
    [
        ({"learning_rate": 1}, "no option"),
        ({"steps": "many"}, "steps must be an integer"),
        ({"steps": 0}, "steps must be > 0"),
        ({"part": "middle"}, "unknown part"),
        ({"segment": 1}, "true or false"),
        ({"class_name": "dog"}, "set per item"),
    ],
)
def test_partial_options_are_validated_without_per_item_values(options, message):
    with pytest.raises(OstafError, match=message):
        validate_options(TrainConfig, options)


def test_kfp_float_numbers_become_ints_at_the_pipeline_boundary_only():
    struct = {"steps": 3.0, "lr": 1.0, "seeds": [0.0, 1.0]}
    assert typed(TrainConfig, {"steps": 3.0, "lr": 1.0}) == {"steps": 3, "lr": 1.0}
    assert typed(GenerateConfig, {"seeds": [0.0, 1.0]})["seeds"] == [0, 1]
    with pytest.raises(OstafError, match="steps must be an integer"):  # core does not guess
        validate_options(TrainConfig, {"steps": struct["steps"]})


def test_presets_come_back_in_eval_mode():
    pipe = load_pipeline("tiny")
    assert not any(m.training for m in (pipe.unet, pipe.vae, pipe.text_encoder))


def test_generate_rebuilds_the_base_model_training_used(tmp_path):
    """Train on `tiny` with the CLI (seed 42 builds the base); the CLI's generate must match `apply` on that base."""
    ref = tmp_path / "ref.png"
    synthetic_image(96).save(ref)
    ckpt, gen = tmp_path / "ckpt", tmp_path / "gen"
    train_args = ["train", "--image", str(ref), "--class-name", "dog", "--steps", "2", "--device", "cpu"]
    assert main([*train_args, "--no-segment", "--token-init", "word", "--model", "tiny", "--out", str(ckpt)]) == 0
    assert load_checkpoint(ckpt).card["base"] == {"model": "tiny", "seed": 42}
    prompt = "a vase in the appearance of *a"
    gen_args = ["generate", "--ckpt", str(ckpt), "--prompt", prompt, "--lam", "1", "--seeds", "3"]
    assert main([*gen_args, "--num-steps", "2", "--device", "cpu", "--out", str(gen)]) == 0
    from_cli = np.asarray(
        __import__("PIL.Image", fromlist=["Image"]).open(next(gen.rglob("lam1_seed3.png"))).convert("RGB")
    )

    from ostaf.generate import set_scheduler

    base = load_pipeline("tiny", seed=42)  # the training-time base
    set_scheduler(base, "ddim")
    apply(base, ckpt, lam=1.0)
    with torch.no_grad():
        direct = base(prompt, generator=torch.Generator().manual_seed(3), num_inference_steps=2, height=64, width=64)
    assert np.array_equal(from_cli, np.asarray(direct.images[0]))
    other = load_pipeline("tiny", seed=0)  # what generate used to build: a different random model
    assert not torch.equal(other.unet.conv_in.weight, base.unet.conv_in.weight)


def test_a_failing_step_marks_its_run_failed_and_the_exit_step_closes_the_parent(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from ostaf.steps import finish_pipeline_run, generate_item, start_pipeline_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    parent = start_pipeline_run("p", "tiny", {}, kfp_run_id="kfp-42")
    child = tracking.child_run(parent, "item-1", params={}, tags={})
    reference = tmp_path / "ref"
    reference.mkdir()
    (reference / "item.json").write_text(json.dumps({"id": "item-1", "prompts": ["a vase in the appearance of *a"]}))
    with pytest.raises(OstafError, match="not an OSTAF checkpoint"):
        generate_item(str(tmp_path / "no-checkpoint"), str(reference), {}, child.run_id, str(tmp_path / "gen"))
    client = MlflowClient(uri)
    assert client.get_run(child.run_id).info.status == "FAILED"
    assert tracking.child_run(parent, "item-1", params={}, tags={}).run_id == child.run_id  # a retry reuses it
    assert client.get_run(parent).info.status == "RUNNING"
    assert finish_pipeline_run("kfp-42", "FAILED") == "FAILED"
    assert client.get_run(parent).info.status == "FAILED"
    assert "tracking did not start" in finish_pipeline_run("kfp-unknown", "SUCCEEDED")


def test_item_groups_are_found_through_the_registry():
    from ostaf import groups
    from ostaf.report import columns

    world = groups.of_item({"group": "attribute-world"})
    assert world is not None and groups.of_source("world") is world and groups.of_model("attribute-world") is world
    assert groups.of_item({"group": None}) is None and groups.of_source("dvc:/x") is None
    assert columns("shape") == ("clip_t", "iou", "shape_iou", "shape_match", "gap_closed", "text_control", "leakage")
    assert columns("style") == (
        *("clip_t", "dino", "gram", "style_dist", "style_match", "gap_closed", "text_control", "leakage"),
    )
    assert groups.strength("appearance") == ("appearance_dist", "appearance_match", -1.0) and not groups.strength("x")


def test_an_attributes_strength_metric_is_registered_once_and_every_table_reads_it(monkeypatch):
    """The world registers (score, match, sign) per attribute on its item group; the experiment's λ metric, the
    tuning's match and the report's best λ all agree with that one entry, and the report follows a change to it."""
    from ostaf import groups
    from ostaf.report import best_lambda, strength_metrics
    from ostaf.world import table, tuning

    world = groups.of_item({"group": "attribute-world"})
    assert table.LAMBDA_METRIC == {a: (s.score, s.sign) for a, s in world.strength.items()}
    assert tuning.MATCH == {a: s.match for a, s in world.strength.items()}
    assert strength_metrics("shape") == (("shape_match", 1.0), ("iou", 1.0))
    means = {0.0: {"shape_match": 0.0, "text_control": 1.0}, 1.0: {"shape_match": 1.0, "text_control": 1.0}}
    assert best_lambda(means, "shape") == (1.0, "shape_match")
    monkeypatch.setitem(world.strength, "shape", groups.Strength("shape_iou", "shape_iou_match", 1.0))
    assert strength_metrics("shape")[0] == ("shape_iou_match", 1.0)


def test_the_manifest_schema_does_not_import_the_world():
    code = "import sys, ostaf.benchmark; print(any(m.startswith('ostaf.world') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_sweep_index_reads_what_write_sweep_wrote(tmp_path):
    from PIL import Image

    from ostaf.sweep import PromptResult, SweepIndex, write_sweep

    images = {(lam, seed): Image.new("RGB", (8, 8), (int(lam * 200), seed, 0)) for lam in (0.0, 1.0) for seed in (0, 1)}
    write_sweep(tmp_path, [PromptResult("a vase in the appearance of *a", images, Image.new("RGB", (16, 16)))], {})
    index = SweepIndex.read(tmp_path)
    groups = index.by_prompt_and_lambda()
    assert list(groups) == [("a vase in the appearance of *a", 0.0), ("a vase in the appearance of *a", 1.0)]
    assert index.path("a vase in the appearance of *a", 1.0, 1) in groups[("a vase in the appearance of *a", 1.0)]
    assert Image.open(index.path("a vase in the appearance of *a", 1.0, 1)).getpixel((0, 0)) == (200, 1, 0)


def test_preprocess_flags_are_the_train_flags(tmp_path, capsys):
    ref = tmp_path / "ref.png"
    synthetic_image(96).save(ref)
    out = tmp_path / "pre"
    argv = ["preprocess", "--image", str(ref), "--model", "tiny", "--no-segment", "--augment-bank", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    recipe = json.loads((out / "recipe.json").read_text())
    assert len(recipe["recipes"]) == 2 and recipe["recipes"][0]["resolution"] == 64  # 0 = the model's native size


def test_the_installed_package_loads_the_world_model_outside_the_repository(tmp_path):
    """Build a wheel, install it alone into a folder, and load the world model from elsewhere (no tests/, no repo)."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for package in ("ostaf", "components", "pipelines"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    target = tmp_path / "site"
    (wheel,) = wheels.glob("ostaf-*.whl")
    install = subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], capture_output=True)
    assert install.returncode == 0, install.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import ostaf, ostaf.models as m, ostaf.presets as presets; p = m.load_pipeline('attribute-world'); "
        "print(ostaf.__file__); print(presets.world_model_path()); print(type(p.unet).__name__, p.unet.training)"
    )
    env = {k: v for k, v in os.environ.items() if k != "OSTAF_WORLD_MODEL"} | {"PYTHONPATH": str(target)}
    run = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    package, model_dir, loaded = run.stdout.strip().splitlines()[-3:]
    assert package.startswith(str(target)) and model_dir.startswith(str(target))
    assert loaded == "UNet2DConditionModel False"


def test_the_experiment_is_a_model_training_one_with_a_description(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.start_run("a run")
    tags = MlflowClient(uri).get_experiment_by_name("ostaf").tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"  # not MLflow 3's GenAI view
    assert tags["mlflow.note.content"].startswith("OSTAF")


def test_a_recipe_sets_the_cli_defaults_and_explicit_flags_still_win():
    from ostaf.cli import build_parser, recipe_of
    from ostaf.recipes import RECIPES

    assert {"paper", "world"} <= set(RECIPES)
    argv = ["train", "--image", "x.png", "--class-name", "vase", "--recipe", "world"]
    args = build_parser(recipe_of(argv)).parse_args(argv)
    assert (args.steps, args.lr, args.token_init, args.segment) == (200, 1e-3, "word", False)
    args = build_parser(recipe_of([*argv, "--steps", "7"])).parse_args([*argv, "--steps", "7"])
    assert args.steps == 7
    paper = ["train", "--image", "x.png", "--class-name", "vase", "--recipe", "paper"]
    assert build_parser(recipe_of(paper)).parse_args(paper).steps == 3000  # the authors' defaults
    gen = ["generate", "--ckpt", "c", "--prompt", "a *m", "--recipe", "world"]
    assert build_parser(recipe_of(gen)).parse_args(gen).num_steps == 25


def test_recipes_layer_left_to_right_on_the_cli_and_the_pipeline_runner():
    from ostaf.cli import build_parser, recipe_of
    from ostaf.recipes import RECIPES, Recipe, layered

    assert layered([]) is None
    both = layered(["world", "paper"])
    assert both.train == RECIPES["world"].train and both.name == "world+paper"
    # a later recipe's values win over an earlier one's, per option
    first, second = Recipe("a", "a", train={"steps": 5, "lr": 0.1}), Recipe("b", "b", train={"steps": 9})
    RECIPES.update(a=first, b=second)
    try:
        assert layered(["a", "b"]).train == {"steps": 9, "lr": 0.1}
        assert layered(["b", "a"]).train == {"steps": 5, "lr": 0.1}
    finally:
        del RECIPES["a"], RECIPES["b"]
    argv = ["train", "--image", "x.png", "--class-name", "vase", "--recipe", "paper", "world"]
    assert build_parser(recipe_of(argv)).parse_args(argv).steps == 200  # world after paper
    from pipelines.run import parse_args

    run = parse_args(["run-local", "--recipe", "paper", "world"])
    assert (run.steps, getattr(run, "gen-num_steps")) == (200, 25)
