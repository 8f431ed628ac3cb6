"""All MLflow calls live here; training and components receive a `RunLogger` (or nothing).

Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else a SQLite store ``mlflow.db`` in the
working directory (MLflow's own default). Runs are addressed by id, so steps in
different processes (KFP tasks) log into the same parent and nested runs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

from ostaf.errors import OstafError

log = logging.getLogger(__name__)
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


_READY_STORES: set[str] = set()


def _ready_sqlite_store(uri: str) -> None:
    """Create or migrate a local SQLite store once, under a file lock: parallel local runs (or KFP branches)
    that all find a new store would otherwise race to create its tables."""
    if not uri.startswith("sqlite:///") or uri in _READY_STORES:
        return
    import fcntl

    from mlflow import MlflowClient

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    _READY_STORES.add(uri)


def client():
    from mlflow import MlflowClient

    # MLflow's own HTTP retries back off for minutes; ours are short and end in the spool.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    _ready_sqlite_store(tracking_uri())
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


PROVENANCE = ("git_commit", "dvc_data_md5")  # tags nested runs take over from their parent


def provenance_tags(repo: str | Path) -> dict[str, str]:
    """Git commit and DVC data hash of the checkout `repo` (the caller's: the pipeline's or a benchmark's)."""
    repo = Path(repo)
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


SPOOL_ENV = "OSTAF_MLFLOW_SPOOL"
RETRIES = 3  # attempts per record before it is spooled
BACKOFF_S = 0.5  # first back-off; doubles per attempt
OFFLINE_S = 30.0  # after a failure, spool without trying the server for this long (training must not wait)


def spool_dir() -> Path:
    """Where records that could not be sent wait for `ostaf sync-tracking`: $OSTAF_MLFLOW_SPOOL or ./mlflow-spool."""
    return Path(os.environ.get(SPOOL_ENV) or Path.cwd() / "mlflow-spool")


class RunLogger:
    """Logs into one existing MLflow run; implements the training `Tracker` protocol.

    Every call becomes a record (params, metrics, tags, artifact, text, end). A record that the
    tracking server does not take after `RETRIES` attempts with exponential back-off is appended
    to the spool (``<spool>/<run_id>.jsonl``, artifacts copied beside it) and the caller goes on;
    for `OFFLINE_S` after a failure records go straight to the spool. `sync_spool` (the CLI's
    ``ostaf sync-tracking``) sends them later.
    """

    def __init__(self, run_id: str, spool: str | Path | None = None) -> None:
        self.run_id = run_id
        self.client = client()
        self.spool = Path(spool) if spool else spool_dir()
        self.offline_until = 0.0
        self.spooled = 0

    def log_params(self, params: dict[str, Any]) -> None:
        flat = flatten(params)
        keys = list(flat)
        for start in range(0, len(keys), 100):
            self._deliver({"kind": "params", "params": {k: flat[k] for k in keys[start : start + 100]}})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        values = {k: float(v) for k, v in metrics.items()}
        self._deliver({"kind": "metrics", "metrics": values, "step": int(step), "timestamp": int(time.time() * 1000)})

    def set_tags(self, tags: dict[str, str]) -> None:
        self._deliver({"kind": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def log_image(self, image: Image.Image, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            image.save(path)
            self.log_artifact(path, str(Path(artifact_file).parent) if "/" in artifact_file else None)

    def log_input(self, name: str, digest: str, source: str, context: str, profile: dict | None = None) -> None:
        """The run's dataset (`mlflow.log_input`'s record): MLflow's UI lists it under the run's inputs."""
        record = {"kind": "input", "name": name, "digest": digest, "source": source, "context": context}
        self._deliver(record | {"profile": json.dumps(profile or {}, sort_keys=True)})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._deliver({"kind": "artifact", "path": str(Path(path).resolve()), "artifact_path": artifact_path})

    def log_text(self, text: str, artifact_file: str) -> None:
        self._deliver({"kind": "text", "text": text, "artifact_file": artifact_file})

    def log_model(self, checkpoint: str | Path, attribute: str) -> None:
        """The checkpoint as a pyfunc model, registered as ``ostaf-<attribute>`` (spooled like any record)."""
        self._deliver({"kind": "model", "path": str(Path(checkpoint).resolve()), "attribute": attribute})

    def set_status(self, status: str) -> None:
        """RUNNING again when a later step writes into the run (`active`)."""
        self._deliver({"kind": "status", "status": status})

    def end(self, status: str = "FINISHED") -> None:
        self._deliver({"kind": "end", "status": status})

    # -- delivery ------------------------------------------------------------------
    def _deliver(self, record: dict[str, Any]) -> None:
        if time.monotonic() >= self.offline_until:
            for attempt in range(RETRIES):
                try:
                    apply_record(self.client, self.run_id, record)
                    return
                except Exception as err:  # noqa: BLE001 - any transport or server error: retry, then spool
                    error = err
                    if attempt + 1 < RETRIES:
                        time.sleep(BACKOFF_S * 2**attempt)
            self.offline_until = time.monotonic() + OFFLINE_S
            if not self.spooled:
                log.warning(
                    "MLflow at %s is not taking records (%s); keeping them in %s until `ostaf sync-tracking`",
                    tracking_uri(),
                    error.__class__.__name__,
                    self.spool,
                )
        self._spool(record)

    def _spool(self, record: dict[str, Any]) -> None:
        folder = self.spool / self.run_id
        if record["kind"] in ("artifact", "model"):  # copy now: the caller may delete the file afterwards
            source = Path(record["path"])
            kept = folder / f"{self.spooled:06d}" / source.name
            kept.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, kept)
            record = record | {"path": str(kept)}
        self.spool.mkdir(parents=True, exist_ok=True)
        with open(self.spool / f"{self.run_id}.jsonl", "a") as f:  # one line per record: a torn line is skipped
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.spooled += 1


def apply_record(mlflow_client, run_id: str, record: dict[str, Any]) -> None:
    """Send one record to MLflow."""
    from mlflow.entities import Metric, Param

    kind = record["kind"]
    if kind == "params":
        mlflow_client.log_batch(run_id, params=[Param(k, v) for k, v in record["params"].items()])
    elif kind == "metrics":
        stamp, step = record["timestamp"], record["step"]
        mlflow_client.log_batch(run_id, metrics=[Metric(k, v, stamp, step) for k, v in record["metrics"].items()])
    elif kind == "tags":
        for key, value in record["tags"].items():
            mlflow_client.set_tag(run_id, key, value)
    elif kind == "artifact":
        path = Path(record["path"])
        if path.is_dir():
            mlflow_client.log_artifacts(run_id, str(path), record["artifact_path"])
        else:
            mlflow_client.log_artifact(run_id, str(path), record["artifact_path"])
    elif kind == "text":
        mlflow_client.log_text(run_id, record["text"], record["artifact_file"])
    elif kind == "input":
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(record["name"], record["digest"], "dvc", record["source"], profile=record["profile"])
        tags = [InputTag("mlflow.data.context", record["context"])]
        mlflow_client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags)])
    elif kind == "model":
        _log_model(run_id, record["path"], record["attribute"])
    elif kind == "status":
        mlflow_client.update_run(run_id, status=record["status"])
    elif kind == "end":
        mlflow_client.set_terminated(run_id, record["status"])
    else:
        raise OstafError(f"unknown tracking record kind {kind!r}")


def sync_spool(spool: str | Path | None = None) -> dict[str, int]:
    """Send every spooled record, oldest first; a run's file goes once all of it is sent. Returns counts per run."""
    from ostaf.io import atomic_write

    spool = Path(spool) if spool else spool_dir()
    sent: dict[str, int] = {}
    mlflow_client = client()
    for journal in sorted(spool.glob("*.jsonl")):
        run_id = journal.stem
        lines = journal.read_text().splitlines()
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("skipping a torn line in %s", journal)
        done = 0
        try:
            for record in records:
                apply_record(mlflow_client, run_id, record)
                done += 1
        except Exception as err:  # noqa: BLE001
            remaining = "".join(json.dumps(r) + "\n" for r in records[done:])
            atomic_write(journal, lambda tmp, text=remaining: tmp.write_text(text))
            raise OstafError(
                f"MLflow at {tracking_uri()} refused a spooled record of run {run_id} ({err.__class__.__name__}: "
                f"{err}); {done} sent, {len(records) - done} kept in {journal}: fix the server and sync again"
            ) from None
        journal.unlink()
        shutil.rmtree(spool / run_id, ignore_errors=True)
        sent[run_id] = done
    return sent


# MLflow 3 opens an experiment without a kind in its GenAI view (traces, token usage): this is model training
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.note.content": (
        "OSTAF: one-shot attribute-focused personalisation of Stable Diffusion. One parent run per pipeline or "
        "benchmark run, one nested run per reference image (loss, per-λ metrics, grids, the checkpoint as a model)."
    ),
}


def local_artifact_root(uri: str | None = None) -> str | None:
    """For a local SQLite store, `mlruns/` beside its file (MLflow's default is ./mlruns of whatever folder the
    process runs in, so a store in a test's or another checkout's folder filled this one's); None otherwise."""
    uri = uri or tracking_uri()
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()


def experiment_id(name: str = EXPERIMENT) -> str:
    """The experiment's id, created (with its kind and description) when it does not exist yet."""
    c = client()
    found = c.get_experiment_by_name(name)
    if found is None:
        return c.create_experiment(name, artifact_location=local_artifact_root(), tags=EXPERIMENT_TAGS)
    for key, value in EXPERIMENT_TAGS.items():  # an experiment made by an older ostaf
        if key not in found.tags:
            c.set_experiment_tag(found.experiment_id, key, value)
    return found.experiment_id


def curve_step(lam: float) -> int:
    """A λ as a metric-history step (100·λ), so MLflow's charts draw metric-vs-λ curves."""
    return round(100 * lam)


def log_lambda_curves(logger, by_lam: Mapping[float, Mapping[str, float]]) -> None:
    """Each metric's λ curve as the history `<metric>_vs_lambda` with step 100·λ: one convention for the
    pipeline's runs, the world experiment's and the tuning's."""
    for lam, metrics in sorted(by_lam.items()):
        logger.log_metrics({f"{k}_vs_lambda": v for k, v in metrics.items()}, step=curve_step(lam))


class TableRow(NamedTuple):
    """One row of a results table as a child run: its params, its metrics at the table's λ, its λ curves."""

    name: str
    params: dict[str, Any]
    metrics: dict[str, float]
    curves: Mapping[float, Mapping[str, float]]


def log_table(
    name: str,
    params: dict[str, Any],
    rows: list[TableRow],
    metrics: dict[str, float],
    artifacts: list[tuple[Path, str | None]],
    tags: dict[str, str] | None = None,
) -> str:
    """A results table as a parent run (its params, `metrics`, `artifacts` as (file, folder)) with one child run
    per row (params, metrics, λ curves): one shape for the world experiment and the world search. Returns the
    parent's run id."""
    check_reachable()
    parent = start_run(name, params=params, tags=tags)
    with active(parent):
        for row in rows:
            with active(start_run(row.name, parent_run_id=parent.run_id, params=row.params)) as child:
                if row.metrics:
                    child.log_metrics(row.metrics, step=0)
                log_lambda_curves(child, row.curves)
        parent.log_metrics(metrics, step=0)
        for path, folder in artifacts:
            parent.log_artifact(path, folder)
    return parent.run_id


def start_run(
    name: str,
    experiment: str = EXPERIMENT,
    parent_run_id: str = "",
    params: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
) -> RunLogger:
    """Create a run (nested under `parent_run_id` if given, with its provenance tags) and return its logger."""
    all_tags = {"mlflow.runName": name, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
        parent = client().get_run(parent_run_id).data.tags
        all_tags |= {k: parent[k] for k in PROVENANCE if k in parent and k not in all_tags}
    run = client().create_run(experiment_id(experiment), tags=all_tags)
    logger = RunLogger(run.info.run_id)
    if params:
        logger.log_params(params)
    return logger


def child_run(parent_run_id: str, name: str, params: dict[str, Any], tags: dict[str, str]) -> RunLogger:
    """The nested run `name` of a parent: the one a failed earlier attempt of the same step left, else a new one.

    So a retried pipeline step (KFP `set_retry`) logs into one run per item, not one per attempt.
    """
    found = client().search_runs(
        [experiment_id()],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.mlflow.runName = '{name}'",
        max_results=1,
    )
    if found:
        return RunLogger(found[0].info.run_id)
    return start_run(name, parent_run_id=parent_run_id, params=params, tags=tags)


def find_run(tag: str, value: str) -> str | None:
    """The newest run of the ostaf experiment whose tag `tag` is `value`."""
    found = client().search_runs(
        [experiment_id()], filter_string=f"tags.{tag} = '{value}'", max_results=1, order_by=["start_time DESC"]
    )
    return found[0].info.run_id if found else None


@contextmanager
def active(logger: RunLogger, reopen: bool = False) -> Iterator[RunLogger]:
    """The run is RUNNING inside the block and FINISHED after it; FAILED (KILLED on Ctrl-C) if the block raises.

    Each step that writes into a run opens and closes it this way (`reopen`: it was closed by an earlier
    step), so no failure leaves a run RUNNING forever.
    """
    if reopen:
        logger.set_status("RUNNING")
    try:
        yield logger
    except KeyboardInterrupt:
        logger.end("KILLED")
        raise
    except BaseException:
        logger.end("FAILED")
        raise
    logger.end("FINISHED")


FINAL_STATUS = {"SUCCEEDED": "FINISHED", "CANCELED": "KILLED", "CANCELLED": "KILLED"}  # KFP state → MLflow status


def finish_run(run_id: str, pipeline_state: str) -> str:
    """Close a pipeline's parent run with the pipeline's final state (FAILED for anything but success)."""
    status = FINAL_STATUS.get(pipeline_state.upper(), "FAILED")
    RunLogger(run_id).end(status)
    return status


def set_best_alias(attribute: str, run_id: str) -> str | None:
    """Point the alias ``best-<attribute>`` at the model version the run `run_id` registered; its version, or None
    when that run registered none (the alias is a registry operation: not spooled, a failure is only logged)."""
    try:
        c = client()
        versions = c.search_model_versions(f"name='ostaf-{attribute}' and run_id='{run_id}'")
        if not versions:
            return None
        version = max(versions, key=lambda v: int(v.version)).version
        c.set_registered_model_alias(f"ostaf-{attribute}", f"best-{attribute}", version)
        return str(version)
    except Exception as err:  # noqa: BLE001 - the table is written either way
        log.warning("could not set the alias best-%s (%s)", attribute, err.__class__.__name__)
        return None


def _log_model(run_id: str, checkpoint: str | Path, attribute: str) -> str:
    """Log the checkpoint as a pyfunc model and register it as ``ostaf-<attribute>``; return its URI.
    `models:/ostaf-<attribute>@latest` is its newest version: MLflow resolves `latest` itself and reserves the
    name (setting an alias of that name is refused)."""
    import mlflow

    from ostaf import mlflow_model

    mlflow.set_tracking_uri(tracking_uri())
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="ostaf",
            python_model=mlflow_model.__file__,  # models-from-code: nothing pickled
            artifacts={"checkpoint": str(checkpoint)},
            registered_model_name=f"ostaf-{attribute}",
            pip_requirements=["ostaf"],
        )
    return info.model_uri
