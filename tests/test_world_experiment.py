"""World references, their exact scores, the world benchmark source, and a reduced experiment end to end."""

import json

import mlflow
import numpy as np
import pytest
import yaml

from ostaf.benchmark import load_manifest
from ostaf.errors import OstafError
from ostaf.steps import select_benchmark
from ostaf.world.evaluate import appearance_distance, classify_shape
from ostaf.world.generator import COLOURS, STYLES, Factors, is_held_out, render
from ostaf.world.references import SOURCE, references, score, seed_of, words_in, write_benchmark


def test_references_are_held_out_distinct_and_prompt_the_other_attribute():
    refs = references(8)
    by = {a: [r for r in refs if r.attribute == a] for a in ("shape", "appearance", "style")}
    assert [len(v) for v in by.values()] == [8, 8, 8]
    for ref in refs:
        f = ref.world().factors
        assert is_held_out(f.shape, f.colour, f.texture, f.style)
        assert {"shape": "*m", "appearance": "*a", "style": "*s"}[ref.attribute] in ref.prompt
        assert f.style == "flat" or ref.attribute == "style"
    assert len({r.world().factors.shape for r in by["shape"]}) == 8
    assert len({r.world().factors.colour for r in by["appearance"]}) == 8
    assert [r.world().factors.style for r in by["style"]].count("flat") == 2  # every style once, then again
    assert len({r.world().factors.style for r in by["style"][:4]}) == 4
    star = next(r for r in by["shape"] if r.world().factors.shape != "circle")
    assert words_in(star.prompt).keys() == {"colour", "texture"}  # the shape itself is only in *m
    assert words_in(star.words)["shape"] == star.world().factors.shape
    assert words_in("a heart in the appearance of *a") == {"shape": "heart"}
    for ref in by["style"]:  # another shape, colour and texture in words; the style only in *s
        f, asked = ref.world().factors, words_in(ref.prompt)
        assert asked.keys() == {"shape", "colour", "texture"}
        assert (asked["shape"], asked["colour"], asked["texture"]) != (f.shape, f.colour, f.texture)
        assert asked["shape"] != f.shape and words_in(ref.words)["style"] == f.style


def test_splits_never_share_a_seed_and_an_offset_draws_the_same_later_references():
    test, validation = references(40, "test"), references(40, "validation")
    assert not {r.seed for r in test} & {r.seed for r in validation}
    assert references(3, "test", offset=5) == references(3, "test", offset=5)  # deterministic
    for attribute in ("shape", "appearance", "style"):
        stream = [r for r in references(8, "test") if r.attribute == attribute]
        later = [r for r in references(3, "test", offset=5) if r.attribute == attribute]
        assert later == stream[5:8]
    assert [r.attribute for r in references(2, attributes=("style",))] == ["style", "style"]
    with pytest.raises(OstafError, match="split"):
        references(1, "train")


def test_scores_are_exact_on_rendered_answers():
    ref = references(1)[0]  # a shape reference
    world = ref.world()
    target = words_in(ref.prompt)
    f = world.factors
    answer = render(Factors(f.shape, target["colour"], target["texture"], "flat", f.cx, f.cy, f.scale))
    assert score(answer.image, "shape", ref.prompt, world) == {
        "shape_iou": 1.0,
        "shape_match": 1.0,
        "text_control": 1.0,
        "leakage": 0.0,
    }
    leaked = render(Factors(f.shape, f.colour, target["texture"], "flat", f.cx, f.cy, f.scale))  # the ref's colour
    assert score(leaked.image, "shape", ref.prompt, world)["leakage"] == 1.0
    wrong = render(Factors("cross" if world.factors.shape != "cross" else "ring", "black", "solid"))
    scores = score(wrong.image, "shape", ref.prompt, world)
    assert scores["shape_iou"] < 0.8 and scores["text_control"] == 0.0
    look = references(1)[1]
    f = look.world().factors
    same = render(Factors(words_in(look.prompt)["shape"], f.colour, f.texture))
    right = score(same.image, "appearance", look.prompt, look.world())
    assert {k: right[k] for k in ("appearance_match", "text_control")} == {"appearance_match": 1.0, "text_control": 1.0}
    assert right["appearance_dist"] == appearance_distance(same.image, look.world().image) < 0.2
    colour = next(c for c in COLOURS if c != f.colour)
    other = score(
        render(Factors(words_in(look.prompt)["shape"], colour, f.texture)).image,
        "appearance",
        look.prompt,
        look.world(),
    )
    assert other["appearance_match"] == 0.0 and other["appearance_dist"] > right["appearance_dist"] + 0.1


def test_style_scores_are_exact_on_rendered_answers():
    ref = references(1, attributes=("style",))[0]
    world, asked = ref.world(), words_in(ref.prompt)
    answer = (asked["shape"], asked["colour"], asked["texture"])
    right = score(render(Factors(*answer, world.factors.style)).image, "style", ref.prompt, world)
    assert right == {"style_dist": 0.0, "style_match": 1.0, "text_control": 1.0, "leakage": 0.0}
    for other in (s for s in STYLES if s != world.factors.style):
        wrong = score(render(Factors(*answer, other)).image, "style", ref.prompt, world)
        assert wrong["style_match"] == 0.0 and wrong["style_dist"] >= 0.9 and wrong["text_control"] == 1.0
    copied = score(world.image, "style", ref.prompt, world)  # the reference itself: its shape and look leak
    assert copied["style_match"] == 1.0 and copied["text_control"] == 0.0 and copied["leakage"] == 1.0


def test_controllability_columns_follow_lambda():
    from ostaf.world.table import summarise

    rows = [
        {"method": "ostaf-lite", "reference": f"r{r}", "attribute": "shape", "lam": lam, "seed": 0}
        | {"shape_iou": 0.5 + 0.1 * lam + 0.01 * r, "shape_match": float(lam > 0.4), "text_control": 1.0 - lam}
        for r in range(4)
        for lam in (0.0, 0.5, 1.0)
    ]
    entry = summarise(rows, lam=1.0)[0]
    assert entry["lam_rho"] == 1.0 and entry["text_drop"] == 1.0 and entry["shape_match"] == 1.0
    assert entry["shape_iou_ci"][0] <= entry["shape_iou"] <= entry["shape_iou_ci"][1]
    flipped = [r | {"shape_iou": 1.0 - r["shape_iou"]} for r in rows]
    assert summarise(flipped, lam=1.0)[0]["lam_rho"] == -1.0
    # appearance: a distance, so λ strengthens the attribute when the distance falls
    looks = [
        r | {"attribute": "appearance", "appearance_dist": 1.0 - r["shape_iou"], "appearance_match": 1.0} for r in rows
    ]
    assert summarise(looks, lam=1.0)[0]["lam_rho"] == 1.0


def test_frame_filling_or_empty_masks_are_no_shape():
    assert classify_shape(np.ones((64, 64), bool))[0] == "none"
    assert classify_shape(np.zeros((64, 64), bool))[0] == "none"


def test_world_benchmark_folder_validates_and_is_a_pipeline_source(tmp_path):
    folder = write_benchmark(tmp_path / "bench", 2)
    manifest = load_manifest(folder)
    assert len(manifest.items) == 12 and all(len(i.prompts) == 2 for i in manifest.items)
    item = manifest.items[0].model_dump()
    assert seed_of(item) == references(2)[0].seed
    # per attribute, named and novel in turn: `--per-attribute 2` (make run) takes one of each
    novel = references(2, kind="novel")
    assert [i.id for i in manifest.items[:4]] == [references(2)[0].id, novel[0].id, references(2)[1].id, novel[1].id]
    assert [i.id for i in manifest.select(per_attribute=2)][2:4] == [references(2)[2].id, novel[2].id]
    ids = select_benchmark(SOURCE, str(tmp_path / "chosen"), ["appearance"], [], 1)
    chosen = yaml.safe_load((tmp_path / "chosen" / "manifest.yaml").read_text())["items"]
    assert ids == [chosen[0]["id"]] and chosen[0]["attribute"] == "appearance"
    assert (tmp_path / "chosen" / chosen[0]["image"]).is_file()
    assert not (tmp_path / "chosen" / ".world").exists()


def test_the_world_source_is_rewritten_when_the_world_changes(tmp_path, monkeypatch):
    import dataclasses
    import tempfile

    from ostaf import data, groups

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    first = data.pull(SOURCE)
    assert {i.attribute for i in load_manifest(first).items} == {"shape", "appearance", "style"}
    group = groups.of_source(SOURCE)
    newer = dataclasses.replace(group, version="99", write_benchmark=lambda dest: write_benchmark(dest, 1))
    monkeypatch.setitem(groups._GROUPS, group.name, newer)
    second = data.pull(SOURCE)  # a folder the old world wrote is not reused
    assert second != first and len(load_manifest(second).items) == 6  # one named and one novel per attribute


@pytest.mark.parametrize("model", ["attribute-world", "tiny-sdxl"])  # the world experiment on SDXL, unchanged
def test_reduced_experiment_runs_end_to_end_and_lands_in_mlflow(tmp_path, monkeypatch, model):
    from ostaf.world.experiment import ExperimentConfig, run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    config = ExperimentConfig(
        model=model,
        references=1,
        methods=["token", "ostaf-encoder-lite", "ostaf-decoder-lite"],
        steps=2,
        lams=[0.0, 1.0],
        seeds=[0],
        num_steps=3,
        out=str(tmp_path / "out"),
    )
    report = run(config, progress=False)
    methods = {(row["method"], row["attribute"]) for row in report["table"]}
    assert methods == {
        *(
            (m, a)
            for m in ("chance", "words", "token", "ostaf-encoder-lite", "ostaf-decoder-lite")
            for a in ("shape", "appearance", "style")
        ),
        ("compose/token", "shape+appearance"),
    }
    rows = json.loads((tmp_path / "out" / "rows.json").read_text())
    assert {r["lam"] for r in rows if r["method"] == "ostaf-decoder-lite"} == {0.0, 1.0}
    # rows.json holds what was generated (rescore reads each row's images back): no chance row among them
    assert {r["method"] for r in rows} == {
        "words",
        "token",
        "ostaf-encoder-lite",
        "ostaf-decoder-lite",
        "compose/token",
    }
    table = (tmp_path / "out" / "table.md").read_text()
    assert "### style" in table and "| ostaf-encoder-lite | 1 |" in table and "lam_rho" in table
    style = next(row for row in report["table"] if row["method"] == "token" and row["attribute"] == "style")
    assert {"style_match", "style_dist", "text_control", "leakage", "lam_rho", "text_drop"} <= set(style)

    # a rerun (after a kill, or with more methods) reads finished jobs back instead of training again
    from ostaf.world import jobs

    monkeypatch.setattr(jobs, "_run_job", lambda *a: (_ for _ in ()).throw(AssertionError("trained again")))
    assert run(config, log_to_mlflow=False, progress=False)["table"] == report["table"]
    assert (tmp_path / "out" / "curves.png").stat().st_size > 0
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("ostaf").experiment_id])
    parent = next(r for r in runs if r.info.run_name == "attribute-world")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(report["table"])
    chance = {row["attribute"]: row for row in report["table"] if row["method"] == "chance"}
    assert chance["shape"]["shape_match"] == 0.1 and 0.0 < chance["shape"]["shape_iou"] < 1.0
    assert chance["style"]["style_match"] == 0.25
    child = next(r for r in children if r.info.run_name == "ostaf-decoder-lite/appearance")
    history = client.get_metric_history(child.info.run_id, "appearance_dist_vs_lambda")
    assert [m.step for m in history] == [0, 100]


@pytest.mark.parametrize("model", ["attribute-world", "tiny-sdxl"])  # SD-1.x (trained) and SDXL (random weights)
def test_benchmark_pipeline_runs_on_world_references_with_the_world_model_and_every_mechanism(
    tmp_path, monkeypatch, model
):
    from components.options import arguments_for
    from ostaf.config import GenerateConfig, TrainConfig, shared_defaults
    from pipelines.run import run_local

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    train = shared_defaults(TrainConfig) | {
        "steps": 2,
        "segment": False,
        "token_init": "word",
        "lr": 1e-4,
        "checkpoint_every": 0,
    }
    # every mechanism of ostaf/mechanisms at once, through the pipeline's option dicts
    train |= {"attn_binding": 0.5, "nn_contrastive": 0.1, "nn_vocab": 256, "dual_path": 0.8}
    train |= {"train_lam": "uniform", "token_steps": 1, "masked_loss": True}
    generate = shared_defaults(GenerateConfig) | {"num_steps": 2, "seeds": [0], "lam": [0.0, 1.0]}
    generate |= {"dual_path": 0.8, "reference_attention": 1.5, "reference_blocks": "all"}
    table = run_local(
        "benchmark",
        {
            "source": SOURCE,
            "attributes": ["shape"],
            "item_ids": [],
            "per_attribute": 1,
            "model": model,
            # typed parameters + extra_options, as the CLI sends them (the metric models: an evaluate option)
            **arguments_for({"train": train, "generate": generate, "evaluate": {"metric_models": "tiny"}}),
        },
        pipeline_root=tmp_path / "kfp",
    )
    page = table.with_name("page").read_text()  # the aggregate's Output[HTML]: the report, one section per item
    assert page.count('<section class="item"') == 1 and 'class="grid"' in page
    table = table.read_text()
    assert "| shape | 1 |" in table
    assert all(metric in table for metric in ("shape_iou", "shape_match", "text_control"))
    assert f"| {references(1)[0].id} | shape |" in table  # the per-item table (score, match; floor where unnamed)

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("ostaf").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    (child,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    (benchmark,) = parent.inputs.dataset_inputs  # the benchmark, recorded with mlflow's dataset input
    assert benchmark.dataset.source == SOURCE and len(benchmark.dataset.digest) == 32
    assert json.loads(benchmark.dataset.profile) == {"items": 1, "shape": 1}
    item = child.data.tags["item"]
    assert f"{item}/shape_match" in parent.data.metrics  # the child's key metrics, on the parent
    best = client.get_model_version_by_alias("ostaf-shape", "best-shape")  # the table's best item, by alias
    assert best.run_id == child.info.run_id


def test_stand_in_metrics_are_not_computed_unless_asked_for(tmp_path):
    """A preset with `--metric-models auto`: the paper's metrics are n/a (left out, with a note), the world's exact
    ones are there; `tiny` computes the stand-ins on request."""
    from PIL import Image

    from ostaf.preprocess import preprocess
    from ostaf.steps import ITEM_FILE, aggregate, evaluate_item
    from ostaf.sweep import PromptResult, write_sweep
    from ostaf.world.references import benchmark_item

    ref = references(1)[0]  # a shape reference
    item = benchmark_item(ref)
    Image.fromarray(ref.world().image).save(tmp_path / "ref.png")
    reference = preprocess(tmp_path / "ref.png", "shape", 64, 1, 0, None).save(tmp_path / "reference")
    (reference / ITEM_FILE).write_text(json.dumps(item))
    answer = Image.fromarray(ref.world().image)
    images = {(1.0, 0): answer}
    write_sweep(tmp_path / "images", [PromptResult(item["prompts"][0], images, answer)], {})
    scores = {}
    for spec in ("auto", "tiny"):
        dest = tmp_path / f"scores-{spec}"
        top = evaluate_item(
            str(tmp_path / "images"), str(reference), "attribute-world", {"metric_models": spec}, "", str(dest)
        )
        scores[spec] = (top, aggregate([str(dest)], "", str(tmp_path / f"report-{spec}")))
    auto, auto_table = scores["auto"]
    assert "clip_t" not in auto and "iou" not in auto and auto["shape_match"] == 1.0
    assert "clip_t" not in auto_table and "n/a (no weights for them here" in auto_table and "shape_iou" in auto_table
    tiny, tiny_table = scores["tiny"]
    assert {"clip_t", "iou", "shape_iou"} <= set(tiny) and "n/a" not in tiny_table
    assert (tmp_path / "scores-auto" / "metrics_vs_lambda.png").is_file()  # the curves of what was computed


def test_a_table_lambda_outside_the_sweep_is_one_error_before_any_work(tmp_path):
    from ostaf.world.experiment import ExperimentConfig, run

    config = ExperimentConfig(references=1, methods=["token"], lams=[0.0, 1.0], table_lam=2.0, out=str(tmp_path))
    with pytest.raises(OstafError, match="add them to --lams"):
        run(config, log_to_mlflow=False, progress=False)
    assert not any(tmp_path.iterdir())


@pytest.fixture
def asked(monkeypatch) -> list:
    """The generation configs asked for, each answered with black images and no model loaded."""
    from PIL import Image

    from ostaf.sweep import PromptResult

    configs = []

    def fake_generate(gen, pipe=None, progress=True):
        configs.append(gen)
        image = Image.new("RGB", (64, 64))
        return [PromptResult(gen.prompt[0], {(lam, s): image for lam in gen.lam for s in gen.seeds}, image)]

    monkeypatch.setattr("ostaf.generate.generate", fake_generate)
    monkeypatch.setattr("ostaf.models.load_pipeline", lambda *a, **k: None)
    return configs


def test_a_switched_composition_is_its_own_row_and_its_switch_reaches_generation(tmp_path, asked):
    """`--compose-switches 0 0.5`: the switched composition is a row of its own (`compose@0.5/<method>`), the
    switch reaches the generation config, and λ reaches it where the method reads λ."""
    from ostaf.world import experiment, jobs, methods
    from ostaf.world.references import references

    config = experiment.ExperimentConfig(out=str(tmp_path), seeds=[0], lams=[0.0, 1.0], compose_switches=[0.0, 0.5])
    shape, look = (references(1, "test", 0, (a,), "named")[0] for a in ("shape", "appearance"))
    rows = jobs.run_compose(config, "lora", shape, look, 0.5)
    assert {r["method"] for r in rows} == {"compose@0.5/lora"} and {r["lam"] for r in rows} == {0.0, 1.0}
    assert asked[-1].compose_switch == 0.5 and asked[-1].lam == [0.0, 1.0]  # LoRA reads λ: both rendered
    jobs.run_compose(config, "token", shape, look, 0.0)
    assert asked[-1].compose_switch == 0.0 and asked[-1].lam == [1.0]  # a token: one λ rendered
    assert methods.reads_lambda("compose@0.5/lora") and not methods.reads_lambda("compose@0.5/token")
    assert methods.is_compose("compose@0.5/lora") and (tmp_path / "runs" / "compose@0.5" / "lora").is_dir()
    config.compose_look = "everywhere"  # its own rows, and the look reaches the generation of a split only
    rows = jobs.run_compose(config, "lora", shape, look, 0.5)
    assert {r["method"] for r in rows} == {"compose@0.5+everywhere/lora"} and asked[-1].compose_look == "everywhere"
    jobs.run_compose(config, "lora", shape, look, 0.0)  # not a split: the look has no steps to act in
    assert asked[-1].compose_switch == 0.0 and asked[-1].compose_look == "late"


def test_each_composition_prompt_form_is_its_own_row_generated_from_its_own_prompt(tmp_path, asked):
    """`--compose-prompts phrase adjective+phrase`: each form is a row of its own, generated from that form's prompt
    (the look's placeholder before the class as well as in its phrase), and the report reads the prompt back
    from the row's name."""
    from ostaf.world import experiment, jobs
    from ostaf.world.references import references

    config = experiment.ExperimentConfig(out=str(tmp_path), seeds=[0], lams=[1.0])
    shape, look = (references(1, "test", 0, (a,), "named")[0] for a in ("shape", "appearance"))
    made = {}
    for form in ("phrase", "adjective+phrase"):
        [row] = jobs.run_compose(config, "token", shape, look, 0.0, form)
        made[row["method"]] = asked[-1].prompt
    assert made == {
        "compose/token": ["an object in the shape of *m in the appearance of *a"],
        "compose[adjective+phrase]/token": ["a *a object in the shape of *m in the appearance of *a"],
    }
    [row] = jobs.run_compose(config, "token", shape, look, 0.4, "adjective")  # with a switch too
    assert row["method"] == "compose[adjective]@0.4/token" and asked[-1].prompt == ["a *a object in the shape of *m"]
    for method, prompt in made.items():
        assert experiment.prompt_of({"method": method}, {}) == prompt[0]


def test_a_generation_variant_takes_the_tuned_settings_of_the_method_it_trains_as(tmp_path):
    """The DreamTuner path trains the token row's token: with `--tuned` it takes the token's steps, lr and λ
    (a search that tuned it itself wins); an untuned method keeps the shared settings."""
    from ostaf.world.experiment import ExperimentConfig

    chosen = {"token": {"shape": {"steps": 321, "lr": 0.007, "lam": 0.5}}}
    path = tmp_path / "chosen.json"
    path.write_text(json.dumps({"chosen": chosen}))
    config = ExperimentConfig(tuned=str(path), steps=50, lr=1e-4)
    assert config.settings("reference-attention", "shape") == config.settings("token", "shape")
    assert config.settings("reference-attention", "shape") | {"token_lr": 0} == {
        "steps": 321,
        "lr": 0.007,
        "lam": 0.5,
        "token_lr": 0,
    }
    assert config.settings("lora", "shape")["steps"] == 50  # not tuned, not an alias: the shared settings
    chosen["reference-attention"] = {"shape": {"steps": 99, "lr": 0.002, "lam": 1.0}}
    (tmp_path / "itself.json").write_text(json.dumps({"chosen": chosen}))
    tuned_itself = ExperimentConfig(tuned=str(tmp_path / "itself.json"))
    assert tuned_itself.settings("reference-attention", "shape")["steps"] == 99


def test_a_method_whose_views_an_attribute_cannot_have_is_one_error_before_any_work(tmp_path):
    from ostaf.world.experiment import ExperimentConfig, run

    # the textured shape views on a style: its views are named outlines in named colours
    config = ExperimentConfig(
        references=1, methods=["views400+lambda"], attributes=["shape", "style"], out=str(tmp_path)
    )
    with pytest.raises(OstafError, match="views400\\+lambda/style: --view-textures .* drop --view-textures"):
        run(config, log_to_mlflow=False, progress=False)
    assert not any(tmp_path.iterdir())


def test_the_shipped_method_trains_and_generates_each_attribute_with_its_recipes(tmp_path, monkeypatch):
    """`shipped` is the main job's `--recipe world disentangled views appearance-views style-views` per reference: a
    shape trains the views recipe on the band and sweeps λ (its strength), an appearance its extended views, a style
    the token alone with its style views at the recipe's rate, λ sweeping from its nearest word; a composition
    composes the shape's and the appearance's checkpoints."""
    from PIL import Image

    from ostaf.recipes import layered
    from ostaf.sweep import PromptResult
    from ostaf.world import experiment, jobs
    from ostaf.world.references import references

    trained, asked = {}, []

    def fake_train(config, pipe=None, progress=True):
        trained[config.attribute] = config

    def fake_generate(gen, pipe=None, progress=True):
        asked.append(gen)
        image = Image.new("RGB", (64, 64))
        return [PromptResult(gen.prompt[0], {(lam, s): image for lam in gen.lam for s in gen.seeds}, image)]

    monkeypatch.setattr("ostaf.train.train", fake_train)
    monkeypatch.setattr("ostaf.generate.generate", fake_generate)
    for name in (
        "ostaf.models.load_pipeline",
        "ostaf.checkpoint.load_checkpoint",
        "ostaf.checkpoint.load_base_pipeline",
    ):
        monkeypatch.setattr(name, lambda *a, **k: None)
    config = experiment.ExperimentConfig(out=str(tmp_path), seeds=[0], lams=[0.0, 1.0], steps=7)
    shape, look = (references(1, "validation", 0, (a,), "named")[0] for a in ("shape", "appearance"))
    jobs.run_job(config, "shipped", shape)
    assert asked[-1].token_lambda and asked[-1].lam == [0.0, 1.0]  # the views recipe's knob, swept
    assert asked[-1].guidance == 2.5 != config.guidance  # at the views recipe's own guidance
    jobs.run_job(config, "shipped", look)
    assert asked[-1].token_lambda and asked[-1].lam == [0.0, 1.0]  # the appearance views' knob, swept
    assert asked[-1].guidance == config.guidance
    style = references(1, "validation", 0, ("style",), "named")[0]
    jobs.run_job(config, "shipped", style)
    assert asked[-1].token_lambda and asked[-1].lam == [0.0, 1.0]  # the style token's knob, swept
    views = layered(["disentangled", "views"], "shape").train
    assert {k: getattr(trained["shape"], k) for k in views} == views and trained["shape"].steps == views["steps"]
    look_views = layered(["disentangled", "appearance-views"], "appearance").train
    assert {k: getattr(trained["appearance"], k) for k in look_views} == look_views
    assert (trained["appearance"].views, trained["appearance"].view_extend) == (10, True)
    style_views = layered(["disentangled", "style-views"], "style").train
    assert {k: getattr(trained["style"], k) for k in style_views} == style_views
    assert (trained["style"].trainable, trained["style"].views, trained["style"].lr) == ("token", 10, 1e-2)
    assert trained["style"].timestep_range == [0.25, 1.0]
    jobs.run_compose(config, "shipped", shape, look)
    runs = tmp_path / "runs" / "shipped"
    assert asked[-1].ckpt == [str(runs / shape.id / "ckpt"), str(runs / look.id / "ckpt")]


def test_lam_range_reads_the_control_columns_over_part_of_the_sweep(tmp_path, capsys):
    """benchmarks/lam_range.py: a sweep that strengthens the shape up to λ = 1 and loses it at 1.5 keeps its
    high lam_rho over [0, 1] and loses it over the whole sweep — read from a folder's job rows files."""
    import sys
    from pathlib import Path

    from ostaf.world.table import summarise

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import lam_range
    finally:
        sys.path.pop(0)
    iou = {0.0: 0.6, 0.5: 0.7, 1.0: 0.9, 1.5: 0.65}
    for ref in ("a", "b"):
        rows = [
            dict(
                method="views",
                attribute="shape",
                reference=ref,
                seed=s,
                lam=lam,
                shape_iou=v + 0.01 * s,
                shape_match=0.0,
                text_control=1.0 - (lam > 1),
                leakage=0.0,
            )
            for lam, v in iou.items()
            for s in (0, 1)
        ]
        job = tmp_path / "runs" / "views" / ref
        job.mkdir(parents=True)
        (job / "rows.json").write_text(json.dumps({"key": {}, "rows": rows}))
    loaded = lam_range.load_rows(tmp_path)
    assert len(loaded) == 16
    whole = summarise(loaded, lam=1.5)[0]
    part = summarise(lam_range.in_range(loaded, 0.0, 1.0), lam=1.0)[0]
    # Spearman with λ tied over seeds: 0.956 for a monotone sweep, 0.390 once λ = 1.5 falls back
    assert part["lam_rho"] == 0.956 and part["text_drop"] == 0.0 and part["shape_iou"] == 0.905
    assert whole["lam_rho"] == 0.39 and whole["text_drop"] == 1.0
    lam_range.main([str(tmp_path), "--lams", "0", "1"])
    assert "[0.0, 0.5, 1.0]" in capsys.readouterr().out


def test_a_methods_own_sampler_settings_reach_its_generation_and_a_composition_keeps_the_experiments(
    tmp_path, monkeypatch, asked
):
    """A recipe's guidance (a generation option, as `views` has) wins over the experiment's for its own
    references; a composition of two checkpoints samples at the experiment's."""
    from ostaf.recipes import Recipe
    from ostaf.world import experiment, jobs, methods
    from ostaf.world.references import references

    monkeypatch.setattr("ostaf.train.train", lambda *a, **k: None)
    for name in ("ostaf.checkpoint.load_checkpoint", "ostaf.checkpoint.load_base_pipeline"):
        monkeypatch.setattr(name, lambda *a, **k: None)
    token = methods.METHODS["token"]
    monkeypatch.setitem(methods.METHODS, "token", Recipe("token", "", token.train, {"guidance": 2.5}))
    config = experiment.ExperimentConfig(out=str(tmp_path), seeds=[0], lams=[1.0], guidance=6.0, num_steps=4)
    shape, look = (references(1, "validation", 0, (a,), "named")[0] for a in ("shape", "appearance"))
    jobs.run_job(config, "token", shape)
    assert (asked[-1].guidance, asked[-1].num_steps) == (2.5, 4)  # the method's guidance, the experiment's steps
    jobs.run_job(config, "lora", shape)
    assert asked[-1].guidance == 6.0  # a method without its own: the experiment's
    jobs.run_job(config, "token", look)
    jobs.run_compose(config, "token", shape, look)
    assert asked[-1].guidance == 6.0 and len(asked[-1].ckpt) == 2


def test_the_guidance_benchmark_generates_a_finished_experiments_checkpoints_at_each_scale(
    tmp_path, monkeypatch, asked
):
    """benchmarks/guidance.py: each job's checkpoint generated again at every asked guidance (no training), on the
    source's references, seeds and table λ; rows `<method>@g<scale>`; a job without its checkpoint is one error."""
    import sys
    from dataclasses import asdict
    from pathlib import Path

    from ostaf.world.experiment import ExperimentConfig

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import guidance
    finally:
        sys.path.pop(0)
    source = tmp_path / "source"
    config = ExperimentConfig(references=2, attributes=["shape"], kind="named", seeds=[0, 1], table_lam=1.0)
    source.mkdir()
    (source / "results.json").write_text(json.dumps({"config": asdict(config)}))
    refs = config.draw()
    monkeypatch.setattr("ostaf.checkpoint.load_checkpoint", lambda *a, **k: None)
    monkeypatch.setattr("ostaf.checkpoint.load_base_pipeline", lambda *a, **k: None)
    with pytest.raises(SystemExit, match="has no checkpoint"):
        guidance.main(
            [str(source), "--methods", "views+band400+lambda", "--guidance", "2", "--out", str(tmp_path / "o")]
        )
    for ref in refs:
        ckpt = source / "runs" / "views+band400+lambda" / ref.id / "ckpt"
        ckpt.mkdir(parents=True)
        (ckpt / "ostaf.json").write_text("{}")
    out = tmp_path / "out"
    guidance.main([str(source), "--methods", "views+band400+lambda", "--guidance", "2", "3.5", "--out", str(out)])
    assert [(g.guidance, g.ckpt[0].split("/")[-2]) for g in asked] == [
        (scale, ref.id) for scale in (2.0, 3.5) for ref in refs
    ]
    assert all(g.lam == [1.0] and g.seeds == [0, 1] and g.token_lambda for g in asked)  # the method's own options
    rows = json.loads((out / "rows.json").read_text())
    assert {r["method"] for r in rows} == {"views+band400+lambda@g2", "views+band400+lambda@g3.5"} and len(rows) == 8
    assert "| views+band400+lambda@g3.5 | 2 |" in (out / "table.md").read_text()
