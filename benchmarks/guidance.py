"""A finished world experiment's trained jobs generated again at other guidance scales, without training: one table
row per (method, guidance) at the experiment's table λ, on the same references and seeds.

    python benchmarks/guidance.py runs/shape-test-seen --methods views+band400+lambda --guidance 2 3 5 \\
        --out benchmarks/results/world-v3/ablation/shape-guidance-test-seen

`source`: an experiment's --out folder whose jobs kept their checkpoints (`runs/<method>/<reference>/ckpt`, as
`benchmarks/attribute_world.py` leaves them). Rows are named `<method>@g<guidance>`; each job's images and grid go
under `--out`. A guidance scale is a sampler setting: the λ sweep and the training are the source's.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields, replace
from pathlib import Path

from ostaf.images import save_image
from ostaf.io import atomic_write, write_json
from ostaf.world.experiment import ExperimentConfig, unnamed_bounds
from ostaf.world.jobs import generate_sweep, scored_rows
from ostaf.world.table import summarise, table_markdown, with_gap_closed


def experiment_of(source: Path) -> ExperimentConfig:
    """The configuration the source experiment ran with (its results.json)."""
    path = source / "results.json"
    if not path.is_file():
        raise SystemExit(f"no results.json in {source}: give a finished benchmarks/attribute_world.py --out folder")
    saved = json.loads(path.read_text())["config"]
    return ExperimentConfig(**{f.name: saved[f.name] for f in fields(ExperimentConfig) if f.name in saved})


def regenerate(config: ExperimentConfig, source: Path, out: Path, method: str, guidance: float) -> list[dict]:
    """`method`'s checkpoints in `source` generated at `guidance` (the table λ, every seed), scored."""
    from ostaf.checkpoint import load_base_pipeline, load_checkpoint

    name, rows = f"{method}@g{guidance:g}", []
    for ref in config.draw():
        ckpt = source / "runs" / method / ref.id / "ckpt"
        if not (ckpt / "ostaf.json").is_file():
            raise SystemExit(f"{ckpt} has no checkpoint: run {method} in {source} first (its jobs keep them)")
        job = out / "runs" / name / ref.id
        pipe = load_base_pipeline(load_checkpoint(str(ckpt)))  # fresh: a pipeline takes one placeholder per name
        lam = [config.table_lam]
        result = generate_sweep(
            config, pipe, [str(ckpt)], ref.prompt, lam, job, method, attribute=ref.attribute, guidance=guidance
        )
        save_image(result.grid, job / "grid.png")
        rows += scored_rows(result.images, ref, name, ref.world())
        print(f"{name:40s} {ref.id}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a finished experiment's --out folder (its jobs' checkpoints)")
    parser.add_argument("--methods", nargs="+", required=True, help="the source's methods to generate again")
    parser.add_argument("--guidance", nargs="+", type=float, required=True, help="classifier-free guidance scales")
    parser.add_argument("--out", type=Path, required=True, help="table.md, rows.json, and each job's images")
    args = parser.parse_args(argv)
    config = replace(experiment_of(args.source), out=str(args.out))
    rows = [row for m in args.methods for g in args.guidance for row in regenerate(config, args.source, args.out, m, g)]
    bounds = unnamed_bounds(config, config.draw())
    scored = with_gap_closed(rows + bounds, bounds)
    table = table_markdown(summarise(scored, config.table_lam))
    write_json(args.out / "rows.json", scored[: len(rows)])
    atomic_write(args.out / "table.md", lambda tmp: tmp.write_text(table))
    print(f"\n{config.kind} references ({config.split}), λ = {config.table_lam:g}, {config.num_steps} steps\n\n{table}")


if __name__ == "__main__":
    main()
