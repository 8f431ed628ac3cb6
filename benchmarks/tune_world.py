"""Tune every method with the same trials on validation references; write chosen.json for the table.

    python benchmarks/tune_world.py --workers 2                       # the full search (see README)
    python benchmarks/tune_world.py --methods token ostaf-lite --references 2 --lrs 1e-3 --steps 50
    python benchmarks/attribute_world.py --tuned runs/attribute-world-tuning/chosen.json --workers 2

Logs to MLflow (`MLFLOW_TRACKING_URI`, else ./mlflow.db): a parent run `attribute-world-tuning`, one
child per trial with its λ curves. Trials are resumable: a rerun reads finished jobs back.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ostaf.flags import add_config_arguments, config_from_args
from ostaf.tracking import provenance_tags
from ostaf.world.tuning import TuneConfig, search

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, TuneConfig)
    parser.add_argument("--no-mlflow", action="store_true", help="only write the files")
    args = parser.parse_args(argv)
    config = config_from_args(TuneConfig, args)
    report = search(config, log_to_mlflow=not args.no_mlflow, tags=provenance_tags(REPO), progress=True)
    print(open(f"{config.out}/trials.md").read())
    print(f"wall time: {report['seconds']:.0f} s")


if __name__ == "__main__":
    main()
