"""The Attribute World experiment: does OSTAF transfer shape through the encoder and appearance through the decoder?

For held-out references (combinations the world model never saw), every method learns the
reference's attribute from the one image, then generates the same prompts with the same seeds
over a λ sweep; the exact world evaluators score each image:

    shape references       "a green dotted object in the shape of *m"
        shape_iou          centred IoU of the image's object with the reference's silhouette (↑)
        text_control       the prompt's colour and texture both appear (↑)
    appearance references  "a heart in the appearance of *a"
        appearance_dist    colour + texture-signature distance to the reference (↓)
        appearance_match   the reference's colour and texture both appear (↑)
        text_control       the prompt's shape appears (↑)

Methods are `TrainConfig` settings (`METHODS`), so each is exactly what `ostaf train` runs. Two rows
need no training: `words` (the base model told the attribute in words — the ceiling of what the
model can draw) and `compose` (an OSTAF shape and an OSTAF appearance checkpoint in one prompt).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ostaf.config import opt
from ostaf.images import load_image, save_image
from ostaf.io import atomic_write, write_json
from ostaf.recipes import WORLD
from ostaf.report import lambda_curves, plot_lambda_curves, to_markdown
from ostaf.sweep import PromptResult, SweepIndex, write_sweep
from ostaf.world.generator import WorldImage
from ostaf.world.references import Reference, chance, references, score, score_composition

# method → TrainConfig overrides; `part` decides encoder (down blocks) vs decoder (up blocks)
METHODS: dict[str, dict[str, Any]] = {
    "token": dict(trainable="token"),
    "finetune-encoder": dict(trainable="blocks", part="encoder"),
    "finetune-decoder": dict(trainable="blocks", part="decoder"),
    "finetune-unet": dict(trainable="unet"),
    "ostaf-encoder-lite": dict(trainable="lite", part="encoder"),
    "ostaf-decoder-lite": dict(trainable="lite", part="decoder"),
    "ostaf-encoder-paper": dict(trainable="paper", part="encoder"),
    "ostaf-decoder-paper": dict(trainable="paper", part="decoder"),
    # the same with ΔW = 0 at step 0 (`--zero-init`) instead of the authors' random init (|ΔW| ≈ 0.2 here)
    "ostaf-encoder-lite-zero": dict(trainable="lite", part="encoder", zero_init=True),
    "ostaf-decoder-lite-zero": dict(trainable="lite", part="decoder", zero_init=True),
    # OSTAF lite on the paper's part (encoder for shape, decoder for appearance), alone and with each mechanism
    "ostaf-lite": dict(trainable="lite"),
    "lite+binding": dict(trainable="lite", attn_binding=1.0),
    "lite+contrastive": dict(trainable="lite", nn_contrastive=0.1),
    "lite+dual-path": dict(trainable="lite", dual_path=0.5),
    "lite+uniform-lambda": dict(trainable="lite", train_lam="uniform"),
    "lite+token-steps": dict(trainable="lite", token_steps=100),
    "lite+masked-loss": dict(trainable="lite", masked_loss=True),
    "lite+reference-attention": dict(trainable="lite"),
}
# generation options of a method (GenerateConfig overrides), where it has any
GENERATE_METHODS: dict[str, dict[str, Any]] = {
    "lite+dual-path": dict(dual_path=0.5),
    "lite+reference-attention": dict(reference_attention=2.0),
}
PAPER_METHODS = tuple(m for m in METHODS if m.startswith(("token", "finetune", "ostaf-")) and m != "ostaf-lite")
MECHANISM_METHODS = ("ostaf-lite", *(m for m in METHODS if m.startswith("lite+")))
COMPOSE = ("ostaf-encoder-lite", "ostaf-decoder-lite")  # shape checkpoint, appearance checkpoint
COMPOSE_PROMPT = "an object in the shape of *m in the appearance of *a"
METRICS = ("shape_iou", "shape_match", "appearance_dist", "appearance_match", "text_control")
TABLE_KEYS = ["method", "attribute", "n", *METRICS, "train_s"]


@dataclass
class ExperimentConfig:
    """What the experiment runs; the CLI flags and MLflow params come from these fields."""

    model: str = opt("attribute-world", "base model (a preset name or a diffusers folder)")
    references: int = opt(8, "held-out references per attribute (shape and appearance)")
    methods: list[str] = opt(
        list(PAPER_METHODS),
        "methods to compare (mechanisms: " + " ".join(MECHANISM_METHODS) + ")",
        choices=tuple(METHODS),
    )
    steps: int = opt(WORLD.train["steps"], "optimizer steps per method and reference (the same budget for all)")
    lr: float = opt(WORLD.train["lr"], "learning rate (the same for all methods; chosen on validation references)")
    lams: list[float] = opt(WORLD.generate["lam"], "λ sweep")
    seeds: list[int] = opt(WORLD.generate["seeds"], "generation seeds")
    num_steps: int = opt(WORLD.generate["num_steps"], "DDIM steps")
    guidance: float = opt(WORLD.generate["guidance"], "classifier-free guidance scale")
    workers: int = opt(1, "parallel jobs (processes with one thread each)")
    out: str = opt("runs/attribute-world", "output folder: table.md, results.json, curves.png, grids")


# -- one job: train one method on one reference, sweep λ, score ------------------------------------


IMAGES = "images"  # each job's sweep folder (a `SweepIndex`) under runs/<method>/<reference>/


def _generate(config: ExperimentConfig, pipe, ckpts: list[str], prompt: str, lams, job: Path, method: str = ""):
    from ostaf.config import GenerateConfig
    from ostaf.generate import generate

    gen = GenerateConfig(
        **GENERATE_METHODS.get(method, {}),
        ckpt=ckpts,
        prompt=[prompt],
        lam=list(lams),
        seeds=list(config.seeds),
        out=str(job / IMAGES),
        num_steps=config.num_steps,
        guidance=config.guidance,
        batch_size=len(lams) * len(config.seeds),
        device="cpu",
    )
    return generate(gen, pipe=pipe, progress=False)[0]


def _rows(images: dict, ref: Reference, method: str, world: WorldImage, seconds: float = 0.0) -> list[dict]:
    rows = []
    for (lam, seed), image in images.items():
        metrics = score(np.asarray(image.convert("RGB")), ref.attribute, ref.prompt, world)
        rows.append(
            {"method": method, "reference": ref.id, "attribute": ref.attribute, "lam": lam, "seed": seed}
            | metrics
            | {"train_seconds": seconds}
        )
    return rows


def run_job(config: ExperimentConfig, method: str, ref: Reference) -> list[dict]:
    """Train `method` on `ref` (resumes if already done), generate the λ sweep, and score it."""
    import torch

    from ostaf.checkpoint import load_base_pipeline, load_checkpoint
    from ostaf.config import TrainConfig
    from ostaf.models import load_pipeline
    from ostaf.train import train

    out = Path(config.out) / "runs" / method / ref.id
    world = ref.world()
    image = save_image(Image.fromarray(world.image), Path(config.out) / "references" / f"{ref.id}.png")
    started = time.perf_counter()
    if method == "words":
        return _rows(_generate_words(config, ref, out), ref, method, world)
    train_config = TrainConfig(
        image=str(image),
        class_name=ref.class_name,
        attribute=ref.attribute,
        model=config.model,
        out=str(out / "ckpt"),
        **(WORLD.train | {"steps": config.steps, "lr": config.lr, "checkpoint_every": 0, "device": "cpu"})
        | METHODS[method],
    )
    with torch.random.fork_rng(devices=[]):
        train(train_config, pipe=load_pipeline(config.model), progress=False)
    seconds = time.perf_counter() - started
    ckpt = str(out / "ckpt")
    result = _generate(config, load_base_pipeline(load_checkpoint(ckpt)), [ckpt], ref.prompt, config.lams, out, method)
    save_image(result.grid, out / "grid.png")
    return _rows(result.images, ref, method, world, seconds)


def _generate_words(config: ExperimentConfig, ref: Reference, out: Path) -> dict[tuple[float, int], Image.Image]:
    """The base model with the attribute spelled out: no checkpoint, so the stock pipeline, one image per seed."""
    from ostaf.generate import Sample, run_batch, set_scheduler
    from ostaf.images import make_grid
    from ostaf.models import load_pipeline

    pipe = load_pipeline(config.model)
    set_scheduler(pipe, "ddim")
    batch = [Sample(ref.words, 1.0, seed) for seed in config.seeds]
    images = {
        (1.0, s.seed): image
        for s, image in zip(batch, run_batch(pipe, [], batch, config.num_steps, config.guidance, None), strict=True)
    }
    grid = make_grid([[image] for image in images.values()], ["words"], [f"seed {s}" for s in config.seeds])
    write_sweep(out / IMAGES, [PromptResult(ref.words, images, grid)], {"prompt": [ref.words]})
    return images


def run_compose(config: ExperimentConfig, shape_ref: Reference, look_ref: Reference) -> list[dict]:
    """One shape and one appearance checkpoint in one prompt: score the shape and the look."""
    from ostaf.models import load_pipeline

    ckpts = [
        str(Path(config.out) / "runs" / m / r.id / "ckpt") for m, r in zip(COMPOSE, (shape_ref, look_ref), strict=True)
    ]
    pair = f"{shape_ref.id}+{look_ref.id}"
    job = Path(config.out) / "runs" / "compose" / pair
    result = _generate(config, load_pipeline(config.model), ckpts, COMPOSE_PROMPT, config.lams, job)
    save_image(result.grid, job / "grid.png")
    shape_world, look_world = shape_ref.world(), look_ref.world()
    return [
        {"method": "compose", "reference": pair, "attribute": "shape+appearance", "lam": lam, "seed": seed}
        | score_composition(np.asarray(image.convert("RGB")), shape_world, look_world)
        for (lam, seed), image in result.images.items()
    ]


def _job(args: tuple) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    kind, config, *rest = args
    return run_compose(config, *rest) if kind == "compose" else run_job(config, *rest)


def jobs(config: ExperimentConfig, refs: list[Reference]) -> Iterator[tuple]:
    for method in ("words", *config.methods):
        for ref in refs:
            yield ("train", config, method, ref)


# -- the whole experiment -----------------------------------------------------------------------


def summarise(rows: list[dict], lam: float = 1.0) -> list[dict]:
    """One row per (method, attribute) at `lam`: each metric's mean over references and seeds."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        if row["lam"] == lam or row["method"] in ("words", "chance"):
            groups[(row["method"], row["attribute"])].append(row)
    table = []
    for (method, attribute), members in groups.items():
        entry = {"method": method, "attribute": attribute, "n": len({m["reference"] for m in members})}
        for metric in METRICS:
            values = [m[metric] for m in members if metric in m]
            if values:
                entry[metric] = round(float(np.mean(values)), 3)
        seconds = [m["train_seconds"] for m in members if m.get("train_seconds")]
        if seconds:
            entry["train_s"] = round(float(np.mean(seconds)), 1)
        table.append(entry)
    order = ["chance", "words", *METHODS, "compose"]
    return sorted(table, key=lambda e: (order.index(e["method"]), e["attribute"]))


def curves_of(rows: list[dict]) -> dict[str, dict[str, dict[float, float]]]:
    """method/attribute → metric → λ → mean (the `words` ceiling has no λ)."""
    return lambda_curves(rows, lambda r: None if r["method"] == "words" else f"{r['method']}/{r['attribute']}", METRICS)


def plot_curves(curves: dict, path: Path) -> Path:
    shown = {name: c for name, c in curves.items() if not name.startswith(("token", "finetune"))}  # λ does nothing
    return plot_lambda_curves(shown, METRICS, path, panel_width=4.5)


def run(
    config: ExperimentConfig, log_to_mlflow: bool = True, progress: bool = True, tags: dict | None = None
) -> dict[str, Any]:
    """Every method on every reference, the compositions, the table, the curves; logged to MLflow."""
    from ostaf.runtime import progress_bar

    started = time.perf_counter()
    refs = references(config.references)
    tasks = list(jobs(config, refs))
    rows: list[dict] = []
    with ProcessPoolExecutor(config.workers) if config.workers > 1 else _Inline() as pool:
        for result in progress_bar(pool.map(_job, tasks), total=len(tasks), disable=not progress, desc="world jobs"):
            rows.extend(result)
        if all(m in config.methods for m in COMPOSE):
            shapes = [r for r in refs if r.attribute == "shape"]
            looks = [r for r in refs if r.attribute == "appearance"]
            for result in pool.map(_job, [("compose", config, s, a) for s, a in zip(shapes, looks, strict=True)]):
                rows.extend(result)
    return finish(config, refs, rows, time.perf_counter() - started, log_to_mlflow, tags)


def prompt_of(row: dict, refs: dict[str, Reference]) -> str:
    """The prompt a result row's images were generated from."""
    if row["method"] == "compose":
        return COMPOSE_PROMPT
    ref = refs[row["reference"]]
    return ref.words if row["method"] == "words" else ref.prompt


def rescore(config: ExperimentConfig, log_to_mlflow: bool = True, tags: dict | None = None) -> dict[str, Any]:
    """Score the images a finished run saved again (after a change to the evaluators), keeping its timings."""
    out = Path(config.out)
    previous = json.loads((out / "results.json").read_text())
    refs = {r.id: r for r in references(config.references)}
    rows = []
    for row in json.loads((out / "rows.json").read_text()):
        sweep = SweepIndex.read(out / "runs" / row["method"] / row["reference"] / IMAGES)
        pixels = np.asarray(load_image(sweep.path(prompt_of(row, refs), row["lam"], row["seed"])))
        if row["method"] == "compose":
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
    table = summarise(rows + floor)
    curves = curves_of(rows)
    seconds = round(seconds, 1)
    report = {"config": asdict(config), "seconds": seconds, "references": [asdict(r) for r in refs], "table": table}
    write_json(out / "rows.json", rows)
    write_json(out / "results.json", report | {"curves": curves})
    markdown = (
        f"{to_markdown(table, TABLE_KEYS)}\nλ = 1 for trained methods; `words`: the base model told the attribute in "
        "words; `chance`: an answer with a wrong attribute, averaged over all of them (exact, by rendering).\n"
    )
    atomic_write(out / "table.md", lambda tmp: tmp.write_text(markdown))
    plot_curves(curves, out / "curves.png")
    if log_to_mlflow:
        _log(config, table, curves, out, seconds, tags or {})
    return report


class _Inline:
    """`ProcessPoolExecutor`'s interface, run in this process (workers=1: easier to debug and profile)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def map(self, fn, items):
        return map(fn, items)


def _log(config: ExperimentConfig, table: list[dict], curves: dict, out: Path, seconds: float, tags: dict) -> None:
    from ostaf import tracking

    tracking.check_reachable()
    parent = tracking.start_run("attribute-world", params=asdict(config), tags=tags)
    with tracking.active(parent):
        for row in table:
            name = f"{row['method']}/{row['attribute']}"
            method = row["method"]
            params = {"method": method, "attribute": row["attribute"], **METHODS.get(method, {})}
            params |= {f"generate.{k}": v for k, v in GENERATE_METHODS.get(method, {}).items()}
            with tracking.active(tracking.start_run(name, parent_run_id=parent.run_id, params=params)) as child:
                child.log_metrics({k: v for k, v in row.items() if isinstance(v, float)}, step=0)
                for metric, by_lam in curves.get(name, {}).items():
                    for lam, value in by_lam.items():  # the λ curve as a metric history (step = 100·λ)
                        child.log_metrics({f"{metric}_vs_lambda": value}, step=int(round(lam * 100)))
        parent.log_metrics({"seconds": seconds}, step=0)
        for name in ("table.md", "results.json", "curves.png"):
            parent.log_artifact(out / name)
        for grid in sorted((out / "runs").glob("*/*/grid.png")):
            parent.log_artifact(grid, f"grids/{grid.parent.parent.name}")
