"""The fair-tuning search: one rule picks trial and λ on validation references; the table reads the picks."""

import json

import mlflow

from ostaf.world.tuning import TuneConfig, pick, search


def test_the_rule_takes_the_best_match_above_the_text_floor_else_the_best_text_control():
    candidates = [
        {"match": 1.0, "metric": 0.9, "text": 0.5},  # the best match, but it loses the prompt
        {"match": 0.75, "metric": 0.5, "text": 0.95},
        {"match": 0.75, "metric": 0.7, "text": 0.9},  # same match, better metric: the pick
        {"match": 0.25, "metric": 0.1, "text": 1.0},
    ]
    best = pick(candidates, floor=0.9)
    assert (best["match"], best["metric"], best["meets_floor"]) == (0.75, 0.7, True)
    fallback = pick(candidates[:1] + [{"match": 0.0, "metric": 0.0, "text": 0.8}], floor=0.9)
    assert (fallback["text"], fallback["meets_floor"]) == (0.8, False)


def test_token_and_weight_methods_search_their_own_grids():
    config = TuneConfig(
        lrs=[1e-3], steps=[100, 200], weight_lrs=[1e-6, 1e-4], weight_steps=[1000], weight_token_lr=3e-3
    )
    assert (
        config.trials("token")
        == config.trials("disentangled")
        == [
            {"lr": 1e-3, "steps": 100},
            {"lr": 1e-3, "steps": 200},
        ]
    )
    for method in ("lora", "ostaf-lite", "finetune"):
        assert config.trials(method) == [
            {"lr": 1e-6, "steps": 1000, "token_lr": 3e-3},
            {"lr": 1e-4, "steps": 1000, "token_lr": 3e-3},
        ]


def test_a_reduced_search_runs_on_validation_logs_every_trial_and_feeds_the_test_table(tmp_path, monkeypatch):
    from ostaf.world.experiment import ExperimentConfig, run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    config = TuneConfig(
        references=1,
        attributes=["shape", "style"],
        methods=["ostaf-lite"],
        weight_lrs=[1e-3, 3e-3],
        weight_steps=[2],
        weight_token_lr=1e-2,
        lams=[0.0, 1.0],
        num_steps=2,
        out=str(tmp_path / "tune"),
    )
    report = search(config)
    chosen = report["chosen"]["ostaf-lite"]
    assert set(chosen) == {"shape", "style"}
    assert all(c["lr"] in (1e-3, 3e-3) and c["steps"] == 2 and c["lam"] in (0.0, 1.0) for c in chosen.values())
    assert all(c["token_lr"] == 1e-2 for c in chosen.values())  # the weight family's token rate
    trials = json.loads((tmp_path / "tune" / "trials.json").read_text())
    assert len(trials) == 2 * 2 * 2  # trials × attributes × λ
    references = json.loads((tmp_path / "tune" / "words" / "results.json").read_text())["references"]
    assert references and all(r["seed"] >= 110_000 for r in references)  # the validation streams

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("ostaf").experiment_id])
    parent = next(r for r in runs if r.info.run_name == "attribute-world-tuning")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(c.data.params["lr"] for c in children) == ["0.001", "0.003"]
    history = client.get_metric_history(children[0].info.run_id, "shape_match_vs_lambda")
    assert [m.step for m in history] == [0, 100]

    # the test table reads each pick's steps, lr and λ
    test = ExperimentConfig(
        references=1,
        attributes=["shape"],
        methods=["ostaf-lite"],
        lams=[0.0, 1.0],
        seeds=[0],
        num_steps=2,
        tuned=str(tmp_path / "tune" / "chosen.json"),
        out=str(tmp_path / "test"),
    )
    assert test.settings("ostaf-lite", "shape") == {k: chosen["shape"][k] for k in ("steps", "lr", "token_lr", "lam")}
    table = run(test, log_to_mlflow=False, progress=False)["table"]
    card = json.loads(next((tmp_path / "test" / "runs" / "ostaf-lite").glob("*/ckpt/ostaf.json")).read_text())
    assert card["train"]["token_lr"] == 1e-2 and card["train"]["lr"] == chosen["shape"]["lr"]  # both rates trained
    row = next(r for r in table if r["method"] == "ostaf-lite")
    assert row["lam"] == chosen["shape"]["lam"]
    assert all(r["seed"] < 110_000 for r in json.loads((tmp_path / "test" / "results.json").read_text())["references"])
