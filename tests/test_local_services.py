"""infra/local: the development services (S3 stand-in + MLflow with S3 artifacts) start on free ports,
seed the DVC `s3` remote, round-trip the benchmark through it, store MLflow artifacts in the
bucket, and stop exactly what they started."""

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "infra" / "local" / "services.py"
DVC = str(Path(sys.executable).parent / "dvc")


def load_services():
    spec = importlib.util.spec_from_file_location("local_services", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


services = load_services()


def run_script(*args: str, state: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--dir", str(state)], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    state = tmp_path_factory.mktemp("services")
    started = run_script("start", "--s3", "moto", state=state)
    assert started.returncode == 0, started.stderr + started.stdout
    record = services.read_state(state)
    yield state, record
    run_script("stop", state=state)


def s3_client(env: dict):
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL_S3"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def test_start_records_live_processes_on_free_ports_and_writes_the_env_file(up):
    state, record = up
    assert [r["name"] for r in record["processes"]] == ["s3", "mlflow"]
    assert all(services.alive(r) for r in record["processes"])
    env_file = (state / "services.env").read_text()
    for key, value in record["env"].items():
        assert f"export {key}={value}\n" in env_file
    assert record["env"]["MLFLOW_TRACKING_URI"] != record["env"]["AWS_ENDPOINT_URL_S3"]
    again = run_script("start", "--s3", "moto", state=state)  # already up: the same services, no second set
    assert again.returncode == 0 and services.read_state(state)["processes"] == record["processes"]


def test_dvc_round_trip_through_the_s3_remote(up, tmp_path):
    """`start` pushed the benchmark to the `s3` remote; a fresh checkout pulls it back byte for byte."""
    _, record = up
    pushed = s3_client(record["env"]).list_objects_v2(Bucket="ostaf-benchmark").get("Contents", [])
    assert any(o["Key"].startswith("attribute-benchmark/files/md5/") for o in pushed)
    clone = tmp_path / "clone"
    (clone / ".dvc").mkdir(parents=True)
    shutil.copy(REPO / ".dvc" / "config", clone / ".dvc" / "config")
    shutil.copy(REPO / "data.dvc", clone / "data.dvc")
    subprocess.run(["git", "init", "-q"], cwd=clone, check=True)
    env = {**os.environ, **record["env"]}
    pulled = subprocess.run([DVC, "pull", "-q", "-r", "s3"], cwd=clone, env=env, capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stderr
    expected = digests(REPO / "data")
    assert expected and digests(clone / "data") == expected


def test_mlflow_artifacts_land_in_the_bucket(up, tmp_path):
    """A client with no S3 settings at all logs through the server's proxy; the object is in the bucket."""
    from mlflow import MlflowClient

    _, record = up
    client = MlflowClient(tracking_uri=record["env"]["MLFLOW_TRACKING_URI"])  # no global MLflow state
    note = tmp_path / "note.txt"
    note.write_text("an artifact through the server's proxy")
    run = client.create_run(client.create_experiment("local-services-test"))
    client.log_artifact(run.info.run_id, str(note))
    client.set_terminated(run.info.run_id)
    key = f"artifacts/{run.info.experiment_id}/{run.info.run_id}/artifacts/note.txt"
    body = s3_client(record["env"]).get_object(Bucket="ostaf-mlflow", Key=key)["Body"].read()
    assert body == note.read_bytes()


def test_stop_ends_only_what_start_began(tmp_path):
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        state = tmp_path / "state"
        started = run_script("start", "--s3", "moto", "--no-seed", state=state)
        assert started.returncode == 0, started.stderr
        record = services.read_state(state)
        # a record whose PID now belongs to another process (same PID, other start time) is left alone
        record["processes"].append({"name": "reused", "pid": bystander.pid, "started": -1, "cmd": []})
        services._write_state(state, record)
        stopped = run_script("stop", state=state)
        assert stopped.returncode == 0 and "s3, mlflow" in stopped.stdout
        assert not any(services.alive(r) for r in record["processes"][:2])
        assert bystander.poll() is None, "a process start did not begin was killed"
        assert not (state / "services.json").exists() and not (state / "services.env").exists()
        assert "nothing was running" in run_script("stop", state=state).stdout
    finally:
        bystander.kill()


def test_a_service_that_cannot_start_says_why_and_leaves_nothing_running(tmp_path, monkeypatch):
    state = tmp_path / "state"
    monkeypatch.setattr(services, "s3_command", lambda kind, port, state: [sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(services.ServiceError, match="s3 exited while starting"):
        services.start(state, "moto", seed=False)
    assert services.read_state(state) is None


def test_a_second_service_that_fails_stops_the_first(tmp_path, monkeypatch):
    """The S3 stand-in starts and answers; MLflow then dies while starting: the S3 process is ended too."""
    state = tmp_path / "state"
    launched: list[dict] = []
    real_launch = services.launch

    def launch(name, cmd, env, logs):
        if name == "mlflow":
            cmd = [sys.executable, "-c", "raise SystemExit(4)"]
        launched.append(real_launch(name, cmd, env, logs))
        return launched[-1]

    monkeypatch.setattr(services, "launch", launch)
    with pytest.raises(services.ServiceError, match="mlflow exited while starting"):
        services.start(state, "moto", seed=False)
    assert [r["name"] for r in launched] == ["s3", "mlflow"]
    deadline = time.monotonic() + 15
    while services.alive(launched[0]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not services.alive(launched[0]), "the S3 stand-in that had started is still running"
    assert services.read_state(state) is None


def test_stand_in_state_lives_in_the_state_folder(tmp_path):
    """local-s3-server (the persistent default) keeps its objects under the state folder."""
    command = services.s3_command("local-s3-server", 9999, tmp_path)
    assert command[command.index("--root-dir") + 1] == str(tmp_path / "s3")
    moto = services.s3_command("moto", 9999, tmp_path)
    assert "--root-dir" not in moto and moto[moto.index("-p") + 1] == "9999"  # in memory, on the chosen port
