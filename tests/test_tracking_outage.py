"""The tracking server goes away mid-run: logging goes on into the spool, and one command sends it later."""

import os
import subprocess
import sys

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
