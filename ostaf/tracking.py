"""All MLflow calls live here; training and components receive a `RunLogger` (or nothing).

Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else a SQLite store ``mlflow.db`` in the
working directory (MLflow's own default). Runs are addressed by id, so steps in
different processes (KFP tasks) log into the same parent and nested runs.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from PIL import Image

from ostaf.errors import OstafError

EXPERIMENT = "ostaf"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def check_reachable(uri: str | None = None, timeout: float = 5.0) -> str:
    """Fail before any work if a tracking server is unreachable; name the URI."""
    uri = uri or tracking_uri()
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
                response.read()
        except (urllib.error.URLError, OSError) as err:
            raise OstafError(
                f"MLflow tracking server {uri} is unreachable ({getattr(err, 'reason', err)}): start it, fix "
                "MLFLOW_TRACKING_URI, or unset it to log to the local mlflow.db"
            ) from None
    return uri


def client():
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri())


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Config dicts → MLflow params (nested keys joined with '.', lists as text)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


def provenance_tags(repo: str | Path | None = None) -> dict[str, str]:
    """Git commit and DVC data hash of the repository the code runs from, where known."""
    repo = Path(repo or Path(__file__).resolve().parents[1])
    tags: dict[str, str] = {}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            tags["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    dvc_file = repo / "data.dvc"
    if dvc_file.is_file():
        import yaml

        outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs", [{}])
        tags["dvc_data_md5"] = str(outs[0].get("md5", ""))
    return tags


class RunLogger:
    """Logs into one existing MLflow run; implements the training `Tracker` protocol."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.client = client()

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten(params)
        items = [Param(k, v) for k, v in flat.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def log_image(self, image: Image.Image, artifact_file: str) -> None:
        self.client.log_image(self.run_id, image, artifact_file=artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


def experiment_id(name: str = EXPERIMENT) -> str:
    c = client()
    found = c.get_experiment_by_name(name)
    return found.experiment_id if found else c.create_experiment(name)


def start_run(
    name: str,
    experiment: str = EXPERIMENT,
    parent_run_id: str = "",
    params: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
) -> RunLogger:
    """Create a run (nested under `parent_run_id` if given) and return its logger."""
    all_tags = {"mlflow.runName": name, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client().create_run(experiment_id(experiment), tags=all_tags)
    logger = RunLogger(run.info.run_id)
    if params:
        logger.log_params(params)
    return logger


def log_checkpoint_model(logger: RunLogger, checkpoint: str | Path, attribute: str) -> str:
    """Log the checkpoint as a pyfunc model and register it as ``ostaf-<attribute>``; return its URI."""
    import mlflow

    from ostaf import mlflow_model

    mlflow.set_tracking_uri(tracking_uri())
    with mlflow.start_run(run_id=logger.run_id):
        info = mlflow.pyfunc.log_model(
            name="ostaf",
            python_model=mlflow_model.__file__,  # models-from-code: nothing pickled
            artifacts={"checkpoint": str(checkpoint)},
            registered_model_name=f"ostaf-{attribute}",
            pip_requirements=["ostaf"],
        )
    return info.model_uri


def log_plot(logger: RunLogger, write_png, artifact_file: str) -> None:
    """Log a plot drawn by `write_png(path)`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        write_png(path)
        logger.log_artifact(path, str(Path(artifact_file).parent) if "/" in artifact_file else None)
