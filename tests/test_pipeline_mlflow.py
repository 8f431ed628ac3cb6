"""End to end on one machine: the single-image pipeline (KFP local runner, tiny preset) against a real
`mlflow server`; runs, metrics, artifacts and the registered model are read back through the client."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from components.options import arguments_for
from ostaf.config import GenerateConfig, TrainConfig, shared_defaults
from ostaf.tracking import provenance_tags
from pipelines.run import run_local
from tests.conftest import synthetic_image
from tests.mlflow_server import MlflowServer


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path).start()
    try:
        yield server.uri
    finally:
        server.stop()


def test_single_image_pipeline_logs_everything_to_a_real_server(mlflow_server, tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    secrets = {"AWS_SECRET_ACCESS_KEY": "s3cr3t-aws-7f9d2c", "MLFLOW_TRACKING_PASSWORD": "s3cr3t-mlflow-51ab"}
    for key, value in secrets.items():  # credentials come from the environment: they must never be logged
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    synthetic_image(96).save(tmp_path / "ref.png")
    train = shared_defaults(TrainConfig) | {"steps": 3, "segment": False, "lr": 1e-4, "checkpoint_every": 0}
    generate = shared_defaults(GenerateConfig) | {"num_steps": 2, "seeds": [0], "lam": [0.0, 1.0]}
    table = run_local(
        "personalization",
        {
            "image": str(tmp_path / "ref.png"),
            "attribute": "appearance",
            "class_name": "toy",
            "prompts": ["a vase in the appearance of *a"],
            "model": "tiny",
            # typed parameters + extra_options, as the CLI sends them (the metric models: an evaluate option)
            **arguments_for({"train": train, "generate": generate, "evaluate": {"metric_models": "tiny"}}),
            "provenance": provenance_tags(Path(__file__).resolve().parents[1]),
        },
        pipeline_root=tmp_path / "kfp",
    )
    assert "| appearance | 1 |" in table.read_text()

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("ostaf")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    (child,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == child.info.status == "FINISHED"
    assert {"git_commit", "dvc_data_md5", "kfp_run_id"} <= set(parent.data.tags)
    assert parent.data.params["train.steps"] == "3" and child.data.params["steps"] == "3"
    assert [m.step for m in client.get_metric_history(child.info.run_id, "loss")] == [1, 2, 3]
    assert {"clip_t/lam_0", "clip_t/lam_1", "dino/lam_1", "gram/lam_1"} <= set(child.data.metrics)
    assert "appearance/clip_t" in parent.data.metrics and parent.data.params["table_lam"] == "1.0"
    for run, name in ((child, "clip_t_vs_lambda"), (parent, "appearance/clip_t_vs_lambda")):  # λ curves: step 100·λ
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [0, 100]
    assert child.data.metrics["best_lam"] in (0.0, 1.0)
    child_files = {a.path for d in ("grids", "plots", "reference") for a in client.list_artifacts(child.info.run_id, d)}
    assert child_files == {
        "grids/grid_0.png",  # by prompt index: the same name in every item's run, for MLflow's compare view
        "grids/a-vase-in-the-appearance-of-a.png",
        "plots/metrics_vs_lambda.png",
        "reference/reference.png",  # what the run learned from
        "reference/mask.png",
    }
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/table.md", "report/table.csv", "report/metrics_vs_lambda.png", "report/report.html"} <= report
    (page,) = (tmp_path / "kfp").rglob("aggregate/page")  # the KFP UI's Output[HTML]: the same page
    assert 'data-item="reference"' in page.read_text()
    logged = [*parent.data.params.values(), *child.data.params.values(), *parent.data.tags.values()]
    for value in secrets.values():  # not in params or tags, nor in any file of the run, store or artifacts
        assert not any(value in str(v) for v in logged)
        leaks = [p for p in tmp_path.rglob("*") if p.is_file() and value.encode() in p.read_bytes()]
        assert leaks == []

    newest = max(int(v.version) for v in client.search_model_versions("name='ostaf-appearance'"))
    assert int(client.get_model_version_by_alias("ostaf-appearance", "latest").version) == newest
    model = mlflow.pyfunc.load_model("models:/ostaf-appearance@latest")  # by alias, not by version number
    query = pd.DataFrame([{"prompt": "a cup in the appearance of *a", "lam": 0.7, "seed": 5, "num_steps": 2}])
    from_mlflow = model.predict(query)[0]

    from ostaf import apply
    from ostaf.models import load_pipeline

    (checkpoint,) = (tmp_path / "kfp").rglob("train/checkpoint/ostaf.json")
    pipe = load_pipeline("tiny", seed=42)  # the base training built: the run's seed (TrainConfig.seed)
    apply(pipe, checkpoint.parent, lam=0.7)
    direct = pipe(
        "a cup in the appearance of *a",
        generator=torch.Generator().manual_seed(5),
        num_inference_steps=2,
        guidance_scale=7.5,
    ).images[0]
    assert np.array_equal(from_mlflow, np.asarray(direct))
