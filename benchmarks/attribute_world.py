"""The Attribute World experiment: OSTAF and its baselines on held-out world references, scored exactly.

    python benchmarks/attribute_world.py --workers 2            # the full table (see README for its wall time)
    python benchmarks/attribute_world.py --references 1 --steps 10 --methods token ostaf-decoder-lite

Writes `table.md`, `results.json` (rows, λ curves, references) and `curves.png` under `--out`, and
logs the same to MLflow (`MLFLOW_TRACKING_URI`, else ./mlflow.db): one parent run, one child run per
method and attribute whose `*_vs_lambda` metric histories are the λ curves (step = 100·λ).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ostaf.flags import add_config_arguments, config_from_args
from ostaf.tracking import provenance_tags
from ostaf.world.experiment import ExperimentConfig, rescore, run

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, ExperimentConfig)
    parser.add_argument("--no-mlflow", action="store_true", help="only write the files")
    parser.add_argument("--rescore", action="store_true", help="score the saved images of a finished run again")
    args = parser.parse_args(argv)
    config = config_from_args(ExperimentConfig, args)
    report = (rescore if args.rescore else run)(config, log_to_mlflow=not args.no_mlflow, tags=provenance_tags(REPO))
    print(open(f"{args.out}/table.md").read())
    print(f"wall time: {report['seconds']:.0f} s")


if __name__ == "__main__":
    main()
