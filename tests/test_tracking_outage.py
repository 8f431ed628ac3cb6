"""The tracking server goes away mid-run: logging goes on into the spool, and one command sends it later."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ostaf import tracking
from ostaf.cli import main
from ostaf.errors import OstafError
from tests.mlflow_server import MlflowServer


def test_unreachable_server_fails_before_any_work_and_names_the_uri(monkeypatch):
    from tests.mlflow_server import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(OstafError, match=uri):
        tracking.check_reachable()


def test_outage_mid_run_spools_and_sync_sends_everything(tmp_path, monkeypatch, capsys):
    server = MlflowServer(tmp_path).start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("OSTAF_MLFLOW_SPOOL", str(tmp_path / "spool"))
    monkeypatch.setattr(tracking, "BACKOFF_S", 0.01)
    try:
        logger = tracking.start_run("outage")
        run_id = logger.run_id
        for step in range(5):
            logger.log_metrics({"loss": 1.0 / (step + 1)}, step)
        server.stop()  # the server dies mid-run
        for step in range(5, 12):  # training goes on: nothing raises
            logger.log_metrics({"loss": 1.0 / (step + 1)}, step)
        (tmp_path / "grid.png").write_bytes(b"png bytes")
        logger.log_artifact(tmp_path / "grid.png", "grids")
        (tmp_path / "grid.png").unlink()  # the spool kept its own copy
        logger.end()
        assert logger.spooled == 9 and (tmp_path / "spool" / f"{run_id}.jsonl").is_file()

        server.start()  # back, same store
        assert main(["sync-tracking"]) == 0
        assert "sent 9 record(s) of 1 run(s)" in capsys.readouterr().out
        client = MlflowClient(server.uri)
        history = client.get_metric_history(run_id, "loss")
        assert sorted(m.step for m in history) == list(range(12))  # none lost, none doubled
        assert [a.path for a in client.list_artifacts(run_id, "grids")] == ["grids/grid.png"]
        assert client.get_run(run_id).info.status == "FINISHED"
        assert not list((tmp_path / "spool").glob("*.jsonl"))  # sent means gone
    finally:
        server.stop()


def test_sync_keeps_what_the_server_did_not_take(tmp_path, monkeypatch):
    from tests.mlflow_server import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setattr(tracking, "RETRIES", 1)
    logger = tracking.RunLogger("r1", spool=tmp_path)
    logger.log_metrics({"loss": 1.0}, 0)
    journal = tmp_path / "r1.jsonl"
    before = journal.read_text()
    with pytest.raises(OstafError, match="kept in"):
        tracking.sync_spool(tmp_path)
    assert journal.read_text() == before


WRITER = """
import sys
from ostaf import tracking
logger = tracking.start_run(f"writer-{sys.argv[1]}")
for step in range(40):
    logger.log_metrics({"loss": step * 0.5, "token_norm": 1.0}, step)
logger.log_params({"writer": sys.argv[1]})
logger.end()
print(logger.run_id, logger.spooled)
"""


def test_four_processes_logging_at_once_to_the_local_store_lose_nothing(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri, "OSTAF_MLFLOW_SPOOL": str(tmp_path / "spool")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(i)],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-1500:] for _, err in outputs]
    runs = [out.split() for out, _ in outputs]
    assert all(spooled == "0" for _, spooled in runs)  # every record reached the store directly
    client = MlflowClient(uri)
    for run_id, _ in runs:
        assert len(client.get_metric_history(run_id, "loss")) == 40
        assert len(client.get_metric_history(run_id, "token_norm")) == 40
        assert client.get_run(run_id).info.status == "FINISHED"


def test_a_sync_refused_part_way_sends_nothing_twice(tmp_path, monkeypatch):
    """The server takes 3 records, refuses the 4th; the next sync sends exactly the rest, once each."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    logger = tracking.RunLogger("run-a", spool=tmp_path / "spool")
    for step in range(6):
        logger._spool({"kind": "metrics", "metrics": {"loss": float(step)}, "step": step, "timestamp": 0})
    received: list[int] = []
    refuse = {"at": 3}

    def server(client, run_id, record):
        if len(received) == refuse["at"]:
            refuse["at"] = -1  # refuses once
            raise ConnectionError("server went away")
        received.append(record["step"])

    monkeypatch.setattr(tracking, "apply_record", server)
    with pytest.raises(OstafError, match="3 sent, 3 kept"):
        tracking.sync_spool(tmp_path / "spool")
    assert tracking.sync_spool(tmp_path / "spool") == {"run-a": 3}
    assert received == [0, 1, 2, 3, 4, 5]  # in order, none twice
    assert not list((tmp_path / "spool").glob("*.jsonl"))


def test_a_record_is_retried_with_back_off_before_it_is_spooled(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    attempts, sleeps = [], []
    monkeypatch.setattr(tracking, "apply_record", lambda *args: attempts.append(1) or (_ for _ in ()).throw(OSError()))
    monkeypatch.setattr(tracking.time, "sleep", sleeps.append)
    logger = tracking.RunLogger("run-b", spool=tmp_path / "spool")
    logger.log_metrics({"loss": 1.0}, 0)
    assert len(attempts) == tracking.RETRIES == 3
    assert sleeps == [tracking.BACKOFF_S, 2 * tracking.BACKOFF_S]  # exponential back-off between attempts
    assert logger.spooled == 1
    logger.log_metrics({"loss": 2.0}, 1)  # within the offline window: straight to the spool, no new attempt
    assert len(attempts) == 3 and logger.spooled == 2


def test_a_registered_model_is_spooled_with_a_copy_of_its_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(tracking, "RETRIES", 1)
    monkeypatch.setattr(tracking, "apply_record", lambda *args: (_ for _ in ()).throw(OSError("down")))
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "ostaf.json").write_text("{}")
    logger = tracking.RunLogger("run-c", spool=tmp_path / "spool")
    logger.log_model(checkpoint, "appearance")
    (record,) = [json.loads(line) for line in (tmp_path / "spool" / "run-c.jsonl").read_text().splitlines()]
    assert record["kind"] == "model" and record["attribute"] == "appearance"
    assert (Path(record["path"]) / "ostaf.json").is_file() and Path(record["path"]) != checkpoint


def test_a_local_store_keeps_its_artifacts_beside_it_not_in_the_working_folder(tmp_path, monkeypatch):
    from ostaf import tracking

    store, elsewhere = tmp_path / "store", tmp_path / "cwd"
    store.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    (tmp_path / "a.txt").write_text("kept")
    logger = tracking.start_run("t")
    logger.log_artifact(tmp_path / "a.txt", "files")
    logger.end()
    assert [p.parent.name for p in (store / "mlruns").rglob("a.txt")] == ["files"]
    assert not (elsewhere / "mlruns").exists()


def test_a_registered_model_reaches_the_local_store_once_and_resolves_as_latest(tmp_path, monkeypatch):
    """The defect: registration set an alias named `latest`, which MLflow reserves (it resolves `@latest` to the
    newest version itself), so every model record failed, was logged again on each retry (three versions per
    item) and sent the rest of the task's records to the spool."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "ostaf.json").write_text("{}")
    logger = tracking.start_run("t")
    logger.log_model(checkpoint, "appearance")
    logger.log_metrics({"loss": 1.0}, 1)
    logger.end()
    assert logger.spooled == 0  # nothing failed over to the spool
    client = MlflowClient(uri)
    (version,) = client.search_model_versions("name='ostaf-appearance'")
    assert version.run_id == logger.run_id
    assert client.get_model_version_by_alias("ostaf-appearance", "latest").version == version.version
    assert [m.value for m in client.get_metric_history(logger.run_id, "loss")] == [1.0]
