"""Fixed costs next to importing torch: the `ostaf` command's start and a local pipeline's per-task overhead.

    python benchmarks/startup.py                 # the CLI rows and a personalization run on tiny (~2 min)
    python benchmarks/startup.py --no-pipeline   # the CLI rows only (~30 s)

CLI rows: the median wall time of `--repeats` fresh processes each, over that of `python -c "import
torch"` measured in the same run; target ≤ 0.3 each. Pipeline rows: the personalization pipeline
on the KFP local runner with the tiny model; a task's overhead is its wall time (the console's
clock) minus its step's own time (printed by `ostaf.steps.timed_step`, the step's imports of torch,
diffusers and mlflow included): the process, the KFP executor and the component's import.
Target: median ≤ 2 s. The exit code is 1 when a target is missed by more than 10 %.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ratios import SLACK, print_table, world_reference  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
OSTAF = [PYTHON, "-m", "ostaf.cli"]
CLI_TARGET = 0.3  # × importing torch
TASK_OVERHEAD_TARGET_S = 2.0
WORK = re.compile(r"ostaf-step-work (\w+) ([\d.]+) s")
WALL = re.compile(r"ostaf-task-wall (\S+) ([\d.]+) s")
LOG = re.compile(r"every task's full log: (\S+?)\)")


def median_seconds(command: list[str], repeats: int, cwd: Path) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, cwd=cwd, capture_output=True, check=False)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def cli_rows(repeats: int, tmp: Path) -> tuple[list[dict], bool]:
    commands = {
        'python -c "import torch"': [PYTHON, "-c", "import torch"],
        "ostaf --help": [*OSTAF, "--help"],
        "ostaf train --help": [*OSTAF, "train", "--help"],
        "ostaf train, missing image (the error)": [*OSTAF, "train", "--image", "missing.png", "--class-name", "dog"],
        "ostaf generate, no checkpoint (the error)": [*OSTAF, "generate", "--ckpt", "nowhere", "--prompt", "a *a"],
    }
    seconds = {name: median_seconds(command, repeats, tmp) for name, command in commands.items()}
    torch_s = seconds.pop('python -c "import torch"')
    rows = [{"command": 'python -c "import torch"', "seconds": round(torch_s, 3), "÷ torch": 1.0, "target": "–"}]
    ok = True
    for name, value in seconds.items():
        ratio = value / torch_s
        ok &= ratio <= CLI_TARGET * SLACK
        rows.append({"command": name, "seconds": round(value, 3), "÷ torch": round(ratio, 3), "target": "≤ 0.3"})
    return rows, ok


def task_overheads(log: Path) -> list[dict]:
    """Per task: wall time, the step's own time, and the rest; tasks run one after another locally."""
    rows, work = [], None
    for line in log.read_text(errors="replace").splitlines():
        if found := WORK.search(line):
            work = float(found[2])
        elif found := WALL.search(line):
            wall = float(found[2])
            rows.append({"task": found[1], "wall_s": wall, "step_s": work or 0.0, "overhead_s": wall - (work or 0.0)})
            work = None
    return rows


def pipeline_rows(tmp: Path) -> tuple[list[dict], bool]:
    image = world_reference(tmp)
    command = [
        PYTHON, "-m", "pipelines", "run-local", "--pipeline", "personalization", "--image", str(image),
        "--attribute", "appearance", "--class-name", "ball", "--prompts", "a cup in the appearance of *a",
        "--model", "tiny", "--no-segment", "--steps", "2", "--gen-num-steps", "2", "--gen-seeds", "0", "--gen-lam", "1",
        "--pipeline-root", str(tmp / "kfp"),
    ]  # fmt: skip
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    found = LOG.search(done.stdout)
    if done.returncode != 0 or not found:
        raise SystemExit(
            f"the local pipeline failed (exit {done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    rows = [
        {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}
        for row in task_overheads(Path(found[1]))
    ]
    median = statistics.median(row["overhead_s"] for row in rows)
    rows.append({"task": "median", "wall_s": "–", "step_s": "–", "overhead_s": round(median, 2)})
    return rows, median <= TASK_OVERHEAD_TARGET_S * SLACK


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-pipeline", action="store_true", help="only the CLI rows")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ostaf-startup-"))
    rows, ok = cli_rows(args.repeats, tmp)
    print_table(rows, f"The command's start, median of {args.repeats} fresh processes (target: ≤ 0.3 × import torch)")
    if not args.no_pipeline:
        tasks, tasks_ok = pipeline_rows(tmp)
        print_table(
            tasks,
            f"Local personalization pipeline on tiny, per task (target: median overhead ≤ {TASK_OVERHEAD_TARGET_S} s)",
        )
        ok &= tasks_ok
    print(f"\n{'all targets met' if ok else 'a target was missed by more than 10 %'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
