"""The Attribute World experiment: which method transfers one reference's attribute, and only it?

For held-out references (combinations the world model never saw) of a split (`validation` for
every tuning choice, `test` for the table), every method learns the reference's attribute from
the one image, then generates the same prompts with the same seeds over a λ sweep; the exact
world evaluators score each image (`ostaf.world.references.score`):

    shape references       "a green dotted object in the shape of *m"
        shape_iou / shape_match           the reference's silhouette / shape class (↑)
        text_control                      the prompt's colour and texture both appear (↑)
    appearance references  "a heart in the appearance of *a"
        appearance_dist / appearance_match   colour + texture distance (↓) / both right (↑)
        text_control                      the prompt's shape appears (↑)
    style references       "a blue striped ring in the style of *s"
        style_dist / style_match          style-feature distance (↓) / the reference's style (↑)
        text_control                      the prompt's shape, colour and texture appear (↑)
    every reference        leakage: the reference's own value of an attribute the prompt names (↓)

Per method and attribute the table gives each metric's mean over references (seeds averaged first)
with a 95 % bootstrap interval over references, and two controllability columns: `lam_rho`, the
Spearman correlation of λ with the attribute metric over the sweep (per reference, then averaged),
and `text_drop`, text control at the smallest λ minus at the largest.

Methods are recipes (`ostaf.world.methods`), so each is exactly what `ostaf train` and `ostaf generate` run;
one job trains and scores one method on one reference (`ostaf.world.jobs`); the table, its intervals and curves
are `ostaf.world.table`; this module runs them all and logs them. Two rows need no training: `words` (the base
model told the attribute in words — the ceiling of what the model can draw) and `compose/<method>` (a method's
shape and appearance checkpoints in one prompt).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ostaf.config import opt
from ostaf.errors import OstafError
from ostaf.images import load_image
from ostaf.io import atomic_write, write_json
from ostaf.recipes import WORLD
from ostaf.sweep import SweepIndex
from ostaf.world.jobs import IMAGES, _Inline, _job, jobs
from ostaf.world.methods import (
    COMPOSE_PROMPTS,
    MECHANISM_METHODS,
    METHODS,
    PAPER_METHODS,
    TABLE_METHODS,
    compose_prompt,
    is_compose,
    method_recipe,
    reads_lambda,
    tracking_params,
    trains_as,
)
from ostaf.world.references import (
    ATTRIBUTES,
    KINDS,
    SPLITS,
    Reference,
    chance,
    reconstruction_limit,
    references,
    score,
    score_composition,
    word_floor,
)
from ostaf.world.table import curves_of, plot_curves, summarise, table_markdown, with_gap_closed


@dataclass
class ExperimentConfig:
    """What the experiment runs; the CLI flags and MLflow params come from these fields."""

    model: str = opt("attribute-world", "base model (a preset name or a diffusers folder)")
    split: str = opt("test", "validation (for every tuning choice) or test references (the table)", choices=SPLITS)
    references: int = opt(16, "held-out references per attribute")
    reference_offset: int = opt(0, "skip the first N references of each stream (a fresh draw nobody tuned on)")
    kind: str = opt(
        "named",
        "references whose attribute is named (v2), or unnamed: seen (in pretraining, without its word) or novel",
        choices=KINDS,
    )
    attributes: list[str] = opt(list(ATTRIBUTES), "attributes to test", choices=ATTRIBUTES)
    methods: list[str] = opt(
        list(TABLE_METHODS),
        "methods to compare (v1 table: "
        + " ".join(PAPER_METHODS)
        + "; mechanisms: "
        + " ".join(MECHANISM_METHODS)
        + ")",
        choices=tuple(METHODS),
    )
    steps: int = opt(WORLD.train["steps"], "optimizer steps per method and reference (the same budget for all)")
    lr: float = opt(WORLD.train["lr"], "learning rate (the same for all methods; chosen on validation references)")
    token_lr: float = opt(0.0, "the token's rate where a method also trains weights (--token-lr; 0: --lr)")
    lams: list[float] = opt([*WORLD.generate["lam"], 1.5], "λ sweep (it holds every λ a tuned method reads)")
    seeds: list[int] = opt(WORLD.generate["seeds"], "generation seeds")
    num_steps: int = opt(WORLD.generate["num_steps"], "DDIM steps")
    guidance: float = opt(WORLD.generate["guidance"], "classifier-free guidance scale")
    workers: int = opt(1, "parallel jobs (processes with one thread each)")
    table_lam: float = opt(1.0, "the λ of the table's columns (trained methods; --tuned chooses per method)")
    tuned: str = opt("", "chosen.json of benchmarks/tune_world.py: steps, lr and λ per method and attribute")
    words: bool = opt(True, "also run the words ceiling (the attribute named in the prompt)")
    compose: list[str] = opt(
        ["token", "lora", "ostaf-lite"],
        "methods (among --methods) whose shape and appearance checkpoints are composed in one prompt (they must "
        "put the two attributes on different U-Net parts, as the paper's parts do)",
        choices=tuple(METHODS),
    )
    compose_switches: list[float] = opt(
        [0.0],
        "--compose-switch values of the compositions, each a row (0: both checkpoints in every step; s: the shape "
        "one for t ≥ s·T, the appearance one below)",
    )
    compose_look: str = opt(
        "late",
        "--compose-look of the split compositions (s > 0): late (the appearance checkpoint only below s·T) or "
        "everywhere (in every step; only the shape one is switched off late); rows `compose@<s>+everywhere/<method>`",
        choices=("late", "everywhere"),
    )
    compose_prompts: list[str] = opt(
        ["phrase"],
        "how each composition's prompt writes the look's placeholder, each a row: phrase ('an object in the shape of "
        "*m in the appearance of *a'), adjective ('a *a object in the shape of *m': where the shape's views named "
        "their look) or adjective+phrase (both); rows `compose[<form>]/<method>` (the phrase: `compose/<method>`)",
        choices=tuple(COMPOSE_PROMPTS),
    )
    out: str = opt("runs/attribute-world", "output folder: table.md, results.json, curves.png, grids")

    def draw(self) -> list[Reference]:
        """The references this configuration runs on."""
        return references(self.references, self.split, self.reference_offset, tuple(self.attributes), self.kind)

    def settings(self, method: str, attribute: str) -> dict[str, Any]:
        """Steps, lr and table λ of `method` on `attribute`: the tuned ones (--tuned), else the shared ones."""
        shared = {"steps": self.steps, "lr": self.lr, "token_lr": self.token_lr, "lam": self.table_lam}
        if not self.tuned:
            return shared
        tuned = _chosen(self.tuned)
        chosen = next((tuned[m] for m in (method, *trains_as(method)) if m in tuned), {}).get(attribute, {})
        return shared | {k: v for k, v in chosen.items() if k in shared}


@lru_cache(maxsize=4)
def _chosen(path: str) -> dict:
    """A search's picks, read once (settings are asked per job and per table row)."""
    return json.loads(Path(path).read_text())["chosen"]


# -- the whole experiment ----------------------------------------------------------------------


def check_lambdas(config: ExperimentConfig) -> None:
    """Every table λ must be in the sweep (else its row would be empty): one error before any work."""
    missing = {
        f"{m}/{a}: {config.settings(m, a)['lam']:g}"
        for m in config.methods
        for a in config.attributes
        if config.settings(m, a)["lam"] not in config.lams
    }
    if missing:
        raise OstafError(
            f"the table reads λ values the sweep does not have ({', '.join(sorted(missing))}): add them to --lams"
        )


def check_methods(config: ExperimentConfig) -> None:
    """Every method must train on every asked attribute (a shape's view flags, say, on a style's views): one
    error before any work."""
    from ostaf.config import check_view_options

    refused = []
    for m in config.methods:
        for a in config.attributes:
            try:
                check_view_options(a, method_recipe(m, a).train)
            except OstafError as e:
                refused.append(f"{m}/{a}: {e}")
    if refused:
        raise OstafError(
            f"methods that cannot train on an asked attribute — {'; '.join(refused)}; pass --attributes "
            "for which they can, or other --methods"
        )


def run(
    config: ExperimentConfig, log_to_mlflow: bool = True, progress: bool = True, tags: dict | None = None
) -> dict[str, Any]:
    """Every method on every reference, the compositions, the table, the curves; logged to MLflow."""
    return run_many([config], log_to_mlflow, progress, tags)[0]


def run_many(
    configs: list[ExperimentConfig], log_to_mlflow: bool = True, progress: bool = True, tags: dict | None = None
) -> list[dict[str, Any]]:
    """Several experiments (a search's trials) through one pool of workers: no start-up per experiment, and
    no worker idles while another experiment still has jobs. Each gets its own files and report."""
    from ostaf.runtime import progress_bar

    started = time.perf_counter()
    for config in configs:
        check_lambdas(config)
        check_methods(config)
    refs = [config.draw() for config in configs]
    tasks = [(i, task) for i, config in enumerate(configs) for task in jobs(config, refs[i])]
    for i, config in enumerate(configs):
        shapes = [r for r in refs[i] if r.attribute == "shape"]
        looks = [r for r in refs[i] if r.attribute == "appearance"]
        pairs = list(zip(shapes, looks, strict=False)) if shapes and looks else []
        composed = [
            (i, ("compose", config, m, s, a, switch, form))
            for form in config.compose_prompts
            for switch in config.compose_switches
            for m in config.compose
            if m in config.methods
            for s, a in pairs
        ]
        tasks += composed  # after every training job: a composition reads two finished checkpoints
    rows: list[list[dict]] = [[] for _ in configs]
    workers = max(config.workers for config in configs)
    trained = [t for t in tasks if t[1][0] != "compose"]
    with ProcessPoolExecutor(workers) if workers > 1 else _Inline() as pool:
        for stage in (trained, [t for t in tasks if t[1][0] == "compose"]):
            results = pool.map(_job, [task for _, task in stage])
            bar = progress_bar(results, total=len(stage), disable=not progress or not stage, desc="world jobs")
            for (i, _), result in zip(stage, bar, strict=True):
                rows[i].extend(result)
    seconds = time.perf_counter() - started
    return [finish(c, refs[i], rows[i], seconds, log_to_mlflow, tags) for i, c in enumerate(configs)]


def prompt_of(row: dict, refs: dict[str, Reference]) -> str:
    """The prompt a result row's images were generated from."""
    if is_compose(row["method"]):
        return compose_prompt(row["method"])
    ref = refs[row["reference"]]
    return ref.words if row["method"] == "words" else ref.prompt


def rescore(config: ExperimentConfig, log_to_mlflow: bool = True, tags: dict | None = None) -> dict[str, Any]:
    """Score the images a finished run saved again (after a change to the evaluators), keeping its timings."""
    out = Path(config.out)
    previous = json.loads((out / "results.json").read_text())
    refs = {r.id: r for r in config.draw()}
    rows = []
    for row in json.loads((out / "rows.json").read_text()):
        sweep = SweepIndex.read(out / "runs" / row["method"] / row["reference"] / IMAGES)
        lam = row["lam"] if reads_lambda(row["method"], row["attribute"]) else 1.0  # the one λ `_generate` rendered
        pixels = np.asarray(load_image(sweep.path(prompt_of(row, refs), lam, row["seed"])))
        if is_compose(row["method"]):
            shape_id, look_id = row["reference"].split("+")
            metrics = score_composition(pixels, refs[shape_id].world(), refs[look_id].world())
        else:
            ref = refs[row["reference"]]
            metrics = score(pixels, ref.attribute, ref.prompt, ref.world())
        keep = {k: row[k] for k in ("method", "reference", "attribute", "lam", "seed", "train_seconds") if k in row}
        rows.append(keep | metrics)
    return finish(config, list(refs.values()), rows, previous["seconds"], log_to_mlflow, tags)


def finish(
    config: ExperimentConfig,
    refs: list[Reference],
    rows: list[dict],
    seconds: float,
    log_to_mlflow: bool,
    tags: dict | None = None,
) -> dict[str, Any]:
    """Table (with the chance floor), curves, files, MLflow."""
    out = Path(config.out)
    floor = [{"method": "chance", "reference": r.id, "attribute": r.attribute, "lam": 1.0} | chance(r) for r in refs]
    bounds = unnamed_bounds(config, refs)
    scored = with_gap_closed(rows + bounds, bounds)
    rows = scored[: len(rows)]  # the methods' rows (rows.json, curves): no chance, floor or limit among them
    table = summarise(scored + floor, lambda method, attribute: config.settings(method, attribute)["lam"])
    curves = curves_of(rows)
    seconds = round(seconds, 1)
    report = {"config": asdict(config), "seconds": seconds, "references": [asdict(r) for r in refs], "table": table}
    write_json(out / "rows.json", rows)
    write_json(out / "results.json", report | {"curves": curves})
    markdown = table_markdown(table)
    atomic_write(out / "table.md", lambda tmp: tmp.write_text(markdown))
    plot_curves(curves, out / "curves.png")
    if log_to_mlflow:
        _log(config, table, curves, out, seconds, tags or {})
    return report


def unnamed_bounds(config: ExperimentConfig, refs: list[Reference]) -> list[dict]:
    """The `floor` (nearest word, rendered) and `limit` (the reference through the model's VAE) rows of the
    unnamed references: the ends of the gap a method's `gap_closed` is measured on."""
    unnamed = [r for r in refs if r.value]
    if not unnamed:
        return []
    from ostaf.models import load_pipeline

    vae = load_pipeline(config.model).vae.float()
    rows = []
    for r in unnamed:
        head = {"reference": r.id, "attribute": r.attribute, "lam": 1.0}
        rows += [{"method": "floor"} | head | word_floor(r), {"method": "limit"} | head | reconstruction_limit(r, vae)]
    return rows


def _log(config: ExperimentConfig, table: list[dict], curves: dict, out: Path, seconds: float, tags: dict) -> None:
    from ostaf import tracking

    rows = []
    for row in table:
        name = f"{row['method']}/{row['attribute']}"
        params = {"method": row["method"], "attribute": row["attribute"], **tracking_params(row["method"])}
        intervals = {f"{k}_low": ci[0] for k, ci in row.items() if k.endswith("_ci")}
        intervals |= {f"{k}_high": ci[1] for k, ci in row.items() if k.endswith("_ci")}
        by_lam: dict[float, dict[str, float]] = defaultdict(dict)
        for metric, values in curves.get(name, {}).items():
            for lam, value in values.items():
                by_lam[lam][metric] = value
        metrics = {k: v for k, v in row.items() if isinstance(v, float)} | intervals
        rows.append(tracking.TableRow(name, params, metrics, by_lam))
    artifacts: list[tuple[Path, str | None]] = [(out / n, None) for n in ("table.md", "results.json", "curves.png")]
    artifacts += [(g, f"grids/{g.parent.parent.name}") for g in sorted((out / "runs").glob("*/*/grid.png"))]
    tracking.log_table("attribute-world", asdict(config), rows, {"seconds": seconds}, artifacts, tags)
