"""One job of the world experiment: train one method on one reference (or compose two checkpoints), generate the
λ sweep, score it; a finished job is read back from its `rows.json` when its settings and its method's options are
the same (and scored again from its images when the scoring changed since)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ostaf.images import save_image
from ostaf.io import write_json
from ostaf.recipes import WORLD
from ostaf.sweep import PromptResult, SweepIndex, write_sweep
from ostaf.world.generator import WorldImage
from ostaf.world.methods import (
    COMPOSE_PROMPTS,
    compose_name,
    generate_options,
    is_compose,
    method_recipe,
    reads_lambda,
    reference_options,
)
from ostaf.world.references import SCORE_VERSION, Reference, score, score_composition

if TYPE_CHECKING:
    from ostaf.world.experiment import ExperimentConfig


IMAGES = "images"  # each job's sweep folder (a `SweepIndex`) under runs/<method>/<reference>/


def generate_sweep(
    config: ExperimentConfig,
    pipe,
    ckpts: list[str],
    prompt: str,
    lams,
    job: Path,
    method: str = "",
    compose_switch: float = 0.0,
    attribute: str | None = None,
    compose_look: str = "late",
    guidance: float | None = None,
):
    """The λ sweep of `ckpts`; where λ cannot change the images (`reads_lambda`), one λ rendered and shown
    at each λ of the sweep (the rows and curves keep their shape: flat, as they are). `guidance`: a scale that
    replaces the experiment's and the method's (`benchmarks/guidance.py`)."""
    from ostaf.config import GenerateConfig
    from ostaf.generate import generate

    rendered = list(lams) if reads_lambda(method, attribute) else [1.0]
    sampler = {"num_steps": config.num_steps, "guidance": config.guidance}  # the experiment's, or the method's own
    asked = {} if guidance is None else {"guidance": guidance}
    gen = GenerateConfig(
        **(sampler | generate_options(method, attribute) | asked),
        ckpt=ckpts,
        prompt=[prompt],
        lam=rendered,
        seeds=list(config.seeds),
        out=str(job / IMAGES),
        batch_size=len(rendered) * len(config.seeds),
        device="cpu",
        compose_switch=compose_switch,
        compose_look=compose_look,
    )
    result = generate(gen, pipe=pipe, progress=False)[0]
    if rendered == list(lams):
        return result
    images = {(lam, seed): result.images[(1.0, seed)] for lam in lams for seed in config.seeds}
    return PromptResult(result.prompt, images, result.grid)


def scored_rows(images: dict, ref: Reference, method: str, world: WorldImage, seconds: float = 0.0) -> list[dict]:
    """One row per generated image ((λ, seed) → image) of `method` on `ref`, with the world's exact metrics."""
    rows, scored = [], {}  # an image shown at several λ (`_generate`) is scored once
    for (lam, seed), image in images.items():
        if id(image) not in scored:
            scored[id(image)] = score(np.asarray(image.convert("RGB")), ref.attribute, ref.prompt, world)
        metrics = scored[id(image)]
        rows.append(
            {"method": method, "reference": ref.id, "attribute": ref.attribute, "lam": lam, "seed": seed}
            | metrics
            | {"train_seconds": seconds}
        )
    return rows


# the fields that change what one job computes (the rest only choose which jobs run, and where)
JOB_FIELDS = ("model", "lams", "seeds", "num_steps", "guidance")

ROWS = "rows.json"  # a finished job's scored rows, beside its images: a rerun skips the job


def job_key(config: ExperimentConfig, method: str, attribute: str) -> dict:
    """What a job's rows depend on: the experiment's shared settings and, for a trained method, its own options
    (`options`: a method redefined since the job ran is run again)."""
    key = {k: getattr(config, k) for k in JOB_FIELDS}
    if method != "words" and not is_compose(method):
        settings = config.settings(method, attribute)
        key |= {k: v for k, v in settings.items() if k != "lam" and (k != "token_lr" or v)}  # 0: as before it
        recipe = method_recipe(method, attribute)
        key["options"] = {"train": recipe.train, "generate": recipe.generate}
    return json.loads(json.dumps(key))  # as it reads back from JSON (tuples → lists)


def same_job(saved: dict, key: dict) -> bool:
    """Whether a saved job's key is `key`; a key saved before the methods' options were keyed (no `options`) is
    compared without them: the committed results' jobs are read back as they were run."""
    return saved == (key if "options" in saved else {k: v for k, v in key.items() if k != "options"})


def finished_rows(
    config: ExperimentConfig, job: Path, method: str, attribute: str, ref: Reference | None = None
) -> list[dict] | None:
    """The rows of a job this configuration already finished (None when not, or with other settings); rows
    scored under an older `SCORE_VERSION` are scored again from the job's images (given its `ref`: no
    training), or, without them, the job runs again."""
    path = job / ROWS
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    if not same_job(saved.get("key", {}), job_key(config, method, attribute)):
        return None
    if saved.get("score", 1) == SCORE_VERSION.get(attribute, 1):
        return saved["rows"]
    rows = rescored(job / IMAGES, ref, saved["rows"]) if ref is not None else None
    return None if rows is None else save_rows(config, job, method, attribute, rows)


def save_rows(config: ExperimentConfig, job: Path, method: str, attribute: str, rows: list[dict]) -> list[dict]:
    key = job_key(config, method, attribute)
    write_json(job / ROWS, {"key": key, "score": SCORE_VERSION.get(attribute, 1), "rows": rows})
    return rows


def rescored(images: Path, ref: Reference, rows: list[dict]) -> list[dict] | None:
    """`rows` with their metrics scored again from the sweep in `images` (training time and keys kept; a row
    whose λ was not rendered reads the λ = 1 image, as `_generate` showed it); None when an image is missing."""
    if not (images / SweepIndex.FILE).is_file():
        return None
    paths = {(e["lam"], e["seed"]): images / e["path"] for e in SweepIndex.read(images).entries}
    world, scored = ref.world(), {}
    out = []
    for row in rows:
        path = paths.get((row["lam"], row["seed"])) or paths.get((1.0, row["seed"]))
        if path is None or not path.is_file():
            return None
        if path not in scored:
            scored[path] = score(np.asarray(Image.open(path).convert("RGB")), ref.attribute, ref.prompt, world)
        out.append(row | scored[path])
    return out


def run_job(config: ExperimentConfig, method: str, ref: Reference) -> list[dict]:
    """Train `method` on `ref`, generate the λ sweep and score it; a job already done is read back."""
    job = Path(config.out) / "runs" / method / ref.id
    done = finished_rows(config, job, method, ref.attribute, ref)
    return done if done is not None else save_rows(config, job, method, ref.attribute, _run_job(config, method, ref))


def _run_job(config: ExperimentConfig, method: str, ref: Reference) -> list[dict]:
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
        return scored_rows(_generate_words(config, ref, out), ref, method, world)
    train_config = TrainConfig(
        image=str(image),
        class_name=ref.class_name,
        attribute=ref.attribute,
        model=config.model,
        out=str(out / "ckpt"),
        **(WORLD.train | {"checkpoint_every": 0, "device": "cpu"})
        | {k: v for k, v in config.settings(method, ref.attribute).items() if k != "lam"}
        | method_recipe(method, ref.attribute).train
        | reference_options(method, ref),
    )
    with torch.random.fork_rng(devices=[]):
        train(train_config, pipe=load_pipeline(config.model), progress=False)
    seconds = time.perf_counter() - started
    ckpt = str(out / "ckpt")
    pipe = load_base_pipeline(load_checkpoint(ckpt))
    result = generate_sweep(config, pipe, [ckpt], ref.prompt, config.lams, out, method, attribute=ref.attribute)
    save_image(result.grid, out / "grid.png")
    return scored_rows(result.images, ref, method, world, seconds)


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


def run_compose(
    config: ExperimentConfig,
    method: str,
    shape_ref: Reference,
    look_ref: Reference,
    switch: float = 0.0,
    form: str = "phrase",
) -> list[dict]:
    """`method`'s shape and appearance checkpoints in one prompt of `form` (`COMPOSE_PROMPTS`; `switch`:
    split by timestep): score the shape and the look."""
    from ostaf.models import load_pipeline

    ckpts = [str(Path(config.out) / "runs" / method / r.id / "ckpt") for r in (shape_ref, look_ref)]
    pair = f"{shape_ref.id}+{look_ref.id}"
    look = config.compose_look if switch else "late"
    name = compose_name(method, switch, look, form)
    job = Path(config.out) / "runs" / name / pair
    done = finished_rows(config, job, name, "shape+appearance")
    if done is not None:
        return done
    pipe = load_pipeline(config.model)
    result = generate_sweep(
        config, pipe, ckpts, COMPOSE_PROMPTS[form], config.lams, job, name, switch, compose_look=look
    )
    save_image(result.grid, job / "grid.png")
    shape_world, look_world = shape_ref.world(), look_ref.world()
    rows = [
        {"method": name, "reference": pair, "attribute": "shape+appearance", "lam": lam, "seed": seed}
        | score_composition(np.asarray(image.convert("RGB")), shape_world, look_world)
        for (lam, seed), image in result.images.items()
    ]
    return save_rows(config, job, name, "shape+appearance", rows)


def _job(args: tuple) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    kind, config, *rest = args
    return run_compose(config, *rest) if kind == "compose" else run_job(config, *rest)


def jobs(config: ExperimentConfig, refs: list[Reference]) -> Iterator[tuple]:
    for method in ("words", *config.methods) if config.words else config.methods:
        for ref in refs:
            yield ("train", config, method, ref)


class _Inline:
    """`ProcessPoolExecutor`'s interface, run in this process (workers=1: easier to debug and profile)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def map(self, fn, items):
        return map(fn, items)
