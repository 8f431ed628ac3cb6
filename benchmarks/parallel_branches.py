"""Item branches side by side: does `run-local --parallelism 2` (the default) get more training out of the machine?

    python benchmarks/parallel_branches.py              # the world model's `views` step, 60 steps a run (~1 min)
    python benchmarks/parallel_branches.py --steps 200 --recipe world appearance-views --attribute appearance

The same `ostaf train` (the Attribute World model, `make run`'s recipe for the attribute) run once on every core,
then `--parallelism` copies at once, each on its share of the cores (`pipelines.run.task_threads`, as run-local
sets `OMP_NUM_THREADS` for its task processes). The machine's throughput is the training steps per second of all
runs together; target: the branches side by side ≥ 1.3 × one run on every core (a small U-Net keeps two cores
busy poorly). The exit code is 1 when the target is missed by more than 10 %.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ratios import SLACK, print_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from pipelines.run import LOCAL_PARALLELISM, task_threads  # noqa: E402

TARGET = 1.3  # machine throughput, branches side by side ÷ one run on every core
TRAINED = re.compile(r"trained (\d+) steps \(([\d.]+) s/step\)")


def reference(folder: Path, attribute: str) -> tuple[Path, str]:
    """`make run`'s named reference of the attribute (the first of the world's test stream): PNG, class name."""
    from PIL import Image

    from ostaf.world.references import reference_world, references

    (ref,) = references(1, attributes=[attribute])
    path = folder / f"{ref.id}.png"
    Image.fromarray(reference_world(ref.attribute, ref.seed, ref.value).image).save(path)
    return path, ref.class_name


def start(image: tuple[Path, str], args: argparse.Namespace, out: Path, threads: int) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "ostaf.cli", "train", "--image", str(image[0]), "--class-name", image[1],
        "--attribute", args.attribute, "--model", "attribute-world", "--recipe", *args.recipe,
        "--steps", str(args.steps), "--no-segment", "--out", str(out),
    ]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MLFLOW_TRACKING_URI": f"sqlite:///{out}.db"}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def seconds_per_step(runs: list[subprocess.Popen]) -> list[float]:
    found = []
    for run in runs:
        output = run.communicate()[0]
        match = TRAINED.search(output)
        if run.returncode != 0 or not match:
            raise SystemExit(f"ostaf train failed (exit {run.returncode}):\n{output[-3000:]}")
        found.append(float(match[2]))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--attribute", default="shape", choices=["shape", "appearance", "style"])
    parser.add_argument("--recipe", nargs="+", default=["world", "views"])
    parser.add_argument("--parallelism", type=int, default=LOCAL_PARALLELISM)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ostaf-parallel-"))
    image = reference(tmp, args.attribute)
    alone = seconds_per_step([start(image, args, tmp / "alone", task_threads(1))])
    side = seconds_per_step(
        [start(image, args, tmp / f"branch{i}", task_threads(args.parallelism)) for i in range(args.parallelism)]
    )
    one_rate, side_rate = 1 / alone[0], sum(1 / s for s in side)
    rows = [
        {
            "runs": f"1 on {task_threads(1)} threads",
            "s/step each": f"{alone[0]:.3f}",
            "machine steps/s": round(one_rate, 2),
            "ratio": 1.0,
            "target": "–",
        },
        {
            "runs": f"{args.parallelism} at once on {task_threads(args.parallelism)} thread(s) each",
            "s/step each": " / ".join(f"{s:.3f}" for s in side),
            "machine steps/s": round(side_rate, 2),
            "ratio": round(side_rate / one_rate, 2),
            "target": f"≥ {TARGET}",
        },
    ]
    title = f"`ostaf train` ({' '.join(args.recipe)}, {args.attribute}, {args.steps} steps) on {os.cpu_count()} cores"
    print_table(rows, title)
    ok = side_rate / one_rate >= TARGET / SLACK
    print(f"\n{'target met' if ok else 'the target was missed by more than 10 %'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
