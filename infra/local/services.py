"""Development services on 127.0.0.1: an S3 stand-in and an MLflow server whose artifacts go to it.

    python infra/local/services.py start [--s3 local-s3-server|moto] [--no-seed] [--dir .services]
    python infra/local/services.py status
    python infra/local/services.py stop

`start` picks free ports, starts the S3 stand-in (`local-s3-server`, which keeps its files under
the state folder, or `moto`, in memory, for tests), creates the buckets, starts `mlflow server`
(SQLite store, artifacts proxied to s3://ostaf-mlflow/artifacts), seeds the bucket of the DVC
remote `s3` with the benchmark (`dvc push -r s3`), and writes `services.env` for
`source .services/services.env`. Each process's PID and start time go to `services.json`; `stop`
ends exactly those processes (and their children), never a process that merely reuses a PID.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
BUCKETS = ("ostaf-mlflow", "ostaf-benchmark")  # MLflow artifacts; DVC remote `s3` (.dvc/config)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "ostaf-local", "AWS_SECRET_ACCESS_KEY": "ostaf-local"}  # stand-in only
STATE = "services.json"
ENV_FILE = "services.env"


class ServiceError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[19])  # a zombie has exited


def alive(record: dict) -> bool:
    return start_time(record["pid"]) == record["started"]


def launch(name: str, cmd: list[str], env: dict[str, str], logs: Path) -> dict:
    log = open(logs / f"{name}.log", "ab")
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    return {"name": name, "pid": proc.pid, "started": start_time(proc.pid), "cmd": cmd}


def wait_http(url: str, record: dict, logs: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(record):
            tail = (logs / f"{record['name']}.log").read_text(errors="replace")[-1500:]
            raise ServiceError(f"{record['name']} exited while starting:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (S3 stand-ins say 403/404 to an anonymous GET)
        except OSError:
            time.sleep(0.3)
    raise ServiceError(f"{record['name']} did not answer at {url} within {timeout:.0f} s (log: {logs})")


def s3_command(kind: str, port: int, state: Path) -> list[str]:
    if kind == "moto":
        return [str(BIN / "moto_server"), "-H", HOST, "-p", str(port)]
    return [str(BIN / "local-s3-server"), "--hostname", HOST, "--port", str(port), "--root-dir", str(state / "s3")]


def environment(s3_url: str, mlflow_url: str) -> dict[str, str]:
    """What a client needs: the tracking server, and S3 (for DVC) at the stand-in."""
    return {
        "MLFLOW_TRACKING_URI": mlflow_url,
        "AWS_ENDPOINT_URL_S3": s3_url,
        "MLFLOW_S3_ENDPOINT_URL": s3_url,
        "AWS_DEFAULT_REGION": "us-east-1",
        **CREDENTIALS,
    }


def create_buckets(env: dict[str, str]) -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL_S3"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in BUCKETS:
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)


def seed_benchmark(env: dict[str, str], logs: Path) -> None:
    """Push the benchmark to the DVC remote `s3`, fetching it from the default remote first if needed."""
    dvc = str(BIN / "dvc")
    child = {**os.environ, **env}
    with open(logs / "seed.log", "ab") as log:
        for cmd in ([dvc, "fetch", "-q"], [dvc, "push", "-q", "-r", "s3"]):
            done = subprocess.run(cmd, cwd=REPO, env=child, stdout=log, stderr=subprocess.STDOUT)
            if done.returncode:
                raise ServiceError(f"`{' '.join(cmd[1:])}` failed while seeding the benchmark (see {logs}/seed.log)")


def read_state(state: Path) -> dict | None:
    path = state / STATE
    return json.loads(path.read_text()) if path.is_file() else None


def start(state: Path, s3_kind: str, seed: bool) -> dict:
    current = read_state(state)
    if current and all(alive(r) for r in current["processes"]):
        return current
    if current:
        stop(state)  # a half-dead set from before: end what is left, start afresh
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    s3_port, mlflow_port = free_port(), free_port()
    env = environment(f"http://{HOST}:{s3_port}", f"http://{HOST}:{mlflow_port}")
    processes: list[dict] = []
    record = {"processes": processes, "env": env, "s3": s3_kind}
    try:
        processes.append(launch("s3", s3_command(s3_kind, s3_port, state), {**os.environ}, logs))
        _write_state(state, record)  # from here on, `stop` can end what started
        wait_http(env["AWS_ENDPOINT_URL_S3"], processes[0], logs)
        create_buckets(env)
        server_env = {**os.environ, **env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        server_env.pop("MLFLOW_TRACKING_URI")
        mlflow_cmd = [
            str(BIN / "mlflow"),
            "server",
            "--host",
            HOST,
            "--port",
            str(mlflow_port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{(state / 'mlflow.db').resolve()}",
            "--serve-artifacts",
            "--artifacts-destination",
            f"s3://{BUCKETS[0]}/artifacts",
        ]
        processes.append(launch("mlflow", mlflow_cmd, server_env, logs))
        _write_state(state, record)
        wait_http(f"{env['MLFLOW_TRACKING_URI']}/health", processes[1], logs, timeout=120)
        if seed:
            seed_benchmark(env, logs)
    except BaseException:
        stop(state)
        raise
    (state / ENV_FILE).write_text("".join(f"export {k}={v}\n" for k, v in env.items()))
    return record


def _write_state(state: Path, record: dict) -> None:
    tmp = state / f"{STATE}.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(state / STATE)


def stop(state: Path, grace: float = 10.0) -> list[str]:
    """End the processes `start` recorded (their whole process groups); returns their names."""
    current = read_state(state)
    if not current:
        return []
    stopped = []
    for record in current["processes"]:
        if not alive(record):
            continue
        os.killpg(record["pid"], signal.SIGTERM)
        deadline = time.monotonic() + grace
        while alive(record) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(record):
            os.killpg(record["pid"], signal.SIGKILL)
        stopped.append(record["name"])
    (state / STATE).unlink(missing_ok=True)
    (state / ENV_FILE).unlink(missing_ok=True)
    return stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--dir", default=os.environ.get("OSTAF_SERVICES_DIR", str(REPO / ".services")))
    parser.add_argument("--s3", choices=["local-s3-server", "moto"], default="local-s3-server")
    parser.add_argument("--no-seed", action="store_true", help="do not push the benchmark to the s3 remote")
    args = parser.parse_args(argv)
    state = Path(args.dir).resolve()
    try:
        if args.command == "start":
            record = start(state, args.s3, seed=not args.no_seed)
            print(f"services up ({', '.join(r['name'] for r in record['processes'])}); in your shell:")
            print(f"  source {state / ENV_FILE}")
            for key, value in record["env"].items():
                print(f"  {key}={value}")
        elif args.command == "stop":
            stopped = stop(state)
            print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        else:
            current = read_state(state)
            for record in current["processes"] if current else []:
                print(f"{record['name']}: pid {record['pid']} {'running' if alive(record) else 'gone'}")
            if not current:
                print("no services started from", state)
    except ServiceError as err:
        print(f"services {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
