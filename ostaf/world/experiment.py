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

Methods are `TrainConfig` settings (`METHODS`), so each is exactly what `ostaf train` runs. Two rows
need no training: `words` (the base model told the attribute in words — the ceiling of what the
model can draw) and `compose/<method>` (a method's shape and appearance checkpoints in one prompt).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ostaf.config import ADAPTER_OF, opt
from ostaf.errors import OstafError
from ostaf.images import load_image, save_image
from ostaf.io import atomic_write, write_json
from ostaf.recipes import DISENTANGLED, WORLD
from ostaf.report import lambda_curves, plot_lambda_curves, to_markdown
from ostaf.stats import bootstrap_interval, spearman
from ostaf.sweep import PromptResult, SweepIndex, write_sweep
from ostaf.world.generator import WorldImage
from ostaf.world.references import (
    ATTRIBUTES,
    KINDS,
    SPLITS,
    STRENGTH,
    Reference,
    chance,
    gap_closed,
    reconstruction_limit,
    references,
    score,
    score_composition,
    varied_class_prompts,
    word_floor,
)

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
    # on the paper's part of each attribute (encoder for shape, decoder for appearance and style):
    "finetune": dict(trainable="blocks"),
    "lora": dict(trainable="lora"),  # peft LoRA on the q/k/v the offsets would modulate, rank 4
    "lora-r16": dict(trainable="lora", lora_rank=16),
    "ostaf-paper": dict(trainable="paper"),
    # the training-free DreamTuner path alone: the token, and the reference's features at generation
    "reference-attention": dict(trainable="token"),
    # OSTAF lite alone and with each mechanism
    "ostaf-lite": dict(trainable="lite"),
    "ostaf-lite-zero": dict(trainable="lite", zero_init=True),  # ΔW = 0 at step 0: λ = 0 and 1 start equal
    "lite-zero+uniform-lambda": dict(trainable="lite", zero_init=True, train_lam="uniform"),
    "lite+binding": dict(trainable="lite", attn_binding=1.0),
    "lite+contrastive": dict(trainable="lite", nn_contrastive=0.1),
    "lite+dual-path": dict(trainable="lite", dual_path=0.5),
    "lite+uniform-lambda": dict(trainable="lite", train_lam="uniform"),
    "lite+token-steps": dict(trainable="lite", token_steps=100),
    "lite+masked-loss": dict(trainable="lite", masked_loss=True),
    "lite+reference-attention": dict(trainable="lite"),
    # the word search (`--token-search`): e* starts at the vocabulary word that best denoises the reference
    "token+search": dict(trainable="token", token_search=32),
    "lite+search": dict(trainable="lite", token_search=32),
    "lite-zero+search": dict(trainable="lite", zero_init=True, token_search=32),
    # longer textual inversion, and OSTAF lite trained after it (the token first, then zero-init offsets at every λ)
    "token-long": dict(trainable="token", steps=400, lr=3e-3),
    "token-800": dict(trainable="token", steps=800, lr=1e-3),
    "lite-zero+token-first": dict(
        trainable="lite", zero_init=True, train_lam="uniform", token_steps=400, steps=500, lr=3e-3
    ),
    # the same on the checkpoint's own part (encoder for shape), its weight ω·λ: λ dials the reference
    "reference-attention-lambda": dict(trainable="token"),
    # where in the noise schedule the loss looks (ostaf/mechanisms/timesteps.py)
    "token+snr": dict(trainable="token", snr_gamma=1.0),
    "token+band": dict(trainable="token", timestep_range=[0.25, 1.0]),
    "disentangled": dict(DISENTANGLED.train),  # the shipped recipe (token+band as the recipe writes it)
    "disentangled+lambda": dict(DISENTANGLED.train),  # the same, λ blending e* from its nearest word (generation)
    "token+band-half": dict(trainable="token", timestep_range=[0.5, 1.0]),
    "token+band+snr": dict(trainable="token", timestep_range=[0.25, 1.0], snr_gamma=1.0),
    "token+band-long": dict(trainable="token", timestep_range=[0.25, 1.0], steps=400),
    "lite+snr": dict(trainable="lite", snr_gamma=1.0),
    "lite+band": dict(trainable="lite", timestep_range=[0.25, 1.0]),
    # prior preservation (ostaf/mechanisms/prior.py): 8 class images of the base model in every step's loss
    "lite+prior": dict(trainable="lite", prior_images=8),
    "lora+prior": dict(trainable="lora", prior_images=8),
    "finetune+prior": dict(trainable="blocks", prior_images=8),
    # pivotal tuning: the token first in the band (the weights at λ = 0), then the weights with the token frozen
    "lite+pivotal": dict(trainable="lite", token_steps=100, timestep_range=[0.25, 1.0]),
    "lora+pivotal": dict(trainable="lora", token_steps=100, timestep_range=[0.25, 1.0]),
    "finetune+pivotal": dict(trainable="blocks", token_steps=100, timestep_range=[0.25, 1.0]),
    "finetune+pivotal+prior": dict(trainable="blocks", token_steps=100, timestep_range=[0.25, 1.0], prior_images=8),
    # prior images of the class with other values of the attributes not learned (`varied_class_prompts`)
    "lite+varied-prior": dict(trainable="lite", prior_images=8),
    "lora+varied-prior": dict(trainable="lora", prior_images=8),
    "finetune+varied-prior": dict(trainable="blocks", prior_images=8),
    "finetune+varied-prior-0.3": dict(trainable="blocks", prior_images=8, prior_loss_weight=0.3),
    "lora+varied-prior-0.3": dict(trainable="lora", prior_images=8, prior_loss_weight=0.3),
    # captioned views (`--views`): the silhouette in four named colours (shape), the surface cut to four named
    # primitives (appearance), each view's prompt naming its word
    "token+views": dict(trainable="token", views=4),
    "disentangled+views": dict(DISENTANGLED.train, views=4),
    "lite+views": dict(trainable="lite", views=4),
    "lora+views": dict(trainable="lora", views=4),
    "finetune+views": dict(trainable="blocks", views=4),
    "finetune+views8": dict(trainable="blocks", views=8),  # every palette colour (shape; appearance has 4)
    "finetune+views-w3": dict(trainable="blocks", views=4, view_loss_weight=3.0),  # the views outweigh the image
    # the silhouette in 8 named colours, each in a named texture (plain, striped, dotted, checkered) in turn
    "finetune+textured-views8": dict(trainable="blocks", views=8, view_textures=True),
    "lora+views+varied-prior": dict(trainable="lora", views=4, prior_images=8),
    "finetune+views+varied-prior": dict(trainable="blocks", views=4, prior_images=8),
    # --hyper-rank: the hypernetwork's square matrices as rank-R factors (issue 17: does quality change?)
    "lite+hyper16": dict(trainable="lite", hyper_rank=16),
    "lite+hyper4": dict(trainable="lite", hyper_rank=4),
}


def reference_options(method: str, ref: Reference) -> dict[str, Any]:
    """Training options a method takes from its reference (TrainConfig overrides): the varied prior's prompts,
    the views' class in the world's words (a flat fill is the texture the world calls plain)."""
    options: dict[str, Any] = {}
    if "+varied-prior" in method:
        options["prior_prompt"] = varied_class_prompts(ref.attribute, ref.world().factors)
    views = METHODS.get(method, {})
    if views.get("views") and not views.get("view_textures") and ref.attribute == "shape":
        options["view_class"] = "{colour} plain object"  # the world's word for a flat fill
    return options


# generation options of a method (GenerateConfig overrides), where it has any
GENERATE_METHODS: dict[str, dict[str, Any]] = {
    "reference-attention": dict(reference_attention=2.0),
    "lite+dual-path": dict(dual_path=0.5),
    "lite+reference-attention": dict(reference_attention=2.0),
    "reference-attention-lambda": dict(reference_attention=2.0, reference_blocks="auto", reference_lambda=True),
    "disentangled+lambda": dict(token_lambda=True),
}
# the v1 table's methods: each tuning on a fixed part, to test which part carries which attribute
PAPER_METHODS = (
    "token",
    "finetune-encoder",
    "finetune-decoder",
    "finetune-unet",
    "ostaf-encoder-lite",
    "ostaf-decoder-lite",
    "ostaf-encoder-paper",
    "ostaf-decoder-paper",
    "ostaf-encoder-lite-zero",
    "ostaf-decoder-lite-zero",
)
# the v2 table's methods, each on the paper's part of each attribute
TABLE_METHODS = ("token", "finetune", "lora", "ostaf-lite", "ostaf-paper", "reference-attention")
MECHANISM_METHODS = ("ostaf-lite", *(m for m in METHODS if m.startswith("lite+")))
COMPOSE_PROMPT = "an object in the shape of *m in the appearance of *a"
METRICS = (
    "shape_iou",
    "shape_match",
    "appearance_dist",
    "appearance_match",
    "style_dist",
    "style_match",
    "text_control",
    "leakage",
    "gap_closed",
)
# rows no training made: the wrong-word average, the nearest-word floor, the words prompt, the VAE's limit
UNTRAINED = ("words", "chance", "floor", "limit")
# the continuous metric λ should raise (sign +1) or lower (-1), per attribute: `lam_rho` follows it
LAMBDA_METRIC = {attribute: (s.score, s.sign) for attribute, s in STRENGTH.items()}
COLUMNS = {  # the table's columns per attribute, the attribute's match first
    "shape": ("shape_match", "shape_iou", "gap_closed", "text_control", "leakage"),
    "appearance": ("appearance_match", "appearance_dist", "gap_closed", "text_control", "leakage"),
    "style": ("style_match", "style_dist", "gap_closed", "text_control", "leakage"),
    "shape+appearance": ("shape_match", "appearance_match", "shape_iou", "appearance_dist"),
}
CONTROL = ("lam_rho", "text_drop")


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


def trains_as(method: str) -> list[str]:
    """The methods without generation options whose training is exactly `method`'s, when `method` has some: a
    generation variant (the DreamTuner path, `disentangled+lambda`) takes their tuned steps, lr and λ unless the
    search tuned it itself."""
    if method not in GENERATE_METHODS:
        return []
    return [m for m in METHODS if m not in GENERATE_METHODS and METHODS[m] == METHODS[method]]


@lru_cache(maxsize=4)
def _chosen(path: str) -> dict:
    """A search's picks, read once (settings are asked per job and per table row)."""
    return json.loads(Path(path).read_text())["chosen"]


# -- one job: train one method on one reference, sweep λ, score ------------------------------------


IMAGES = "images"  # each job's sweep folder (a `SweepIndex`) under runs/<method>/<reference>/


def reads_lambda(method: str) -> bool:
    """Whether λ changes what `method` generates: an adapter scales with it, or the reference's weight does.
    A token or fine-tuned weights are one model at every λ, so their sweep is rendered once (`_generate`)."""
    base = method.split("/", 1)[1] if is_compose(method) else method
    generation = GENERATE_METHODS.get(base, {})
    return base in METHODS and (
        METHODS[base]["trainable"] in ADAPTER_OF
        or generation.get("reference_lambda", False)
        or generation.get("token_lambda", False)
    )


def _generate(
    config: ExperimentConfig,
    pipe,
    ckpts: list[str],
    prompt: str,
    lams,
    job: Path,
    method: str = "",
    compose_switch: float = 0.0,
):
    """The λ sweep of `ckpts`; where λ cannot change the images (`reads_lambda`), one λ rendered and shown
    at each λ of the sweep (the rows and curves keep their shape: flat, as they are)."""
    from ostaf.config import GenerateConfig
    from ostaf.generate import generate

    rendered = list(lams) if reads_lambda(method) else [1.0]

    gen = GenerateConfig(
        **GENERATE_METHODS.get(method, {}),
        ckpt=ckpts,
        prompt=[prompt],
        lam=rendered,
        seeds=list(config.seeds),
        out=str(job / IMAGES),
        num_steps=config.num_steps,
        guidance=config.guidance,
        batch_size=len(rendered) * len(config.seeds),
        device="cpu",
        compose_switch=compose_switch,
    )
    result = generate(gen, pipe=pipe, progress=False)[0]
    if rendered == list(lams):
        return result
    images = {(lam, seed): result.images[(1.0, seed)] for lam in lams for seed in config.seeds}
    return PromptResult(result.prompt, images, result.grid)


def _rows(images: dict, ref: Reference, method: str, world: WorldImage, seconds: float = 0.0) -> list[dict]:
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
    key = {k: getattr(config, k) for k in JOB_FIELDS}
    if method != "words" and not is_compose(method):
        settings = config.settings(method, attribute)
        key |= {k: v for k, v in settings.items() if k != "lam" and (k != "token_lr" or v)}  # 0: as before it
    return json.loads(json.dumps(key))  # as it reads back from JSON (tuples → lists)


def finished_rows(config: ExperimentConfig, job: Path, method: str, attribute: str) -> list[dict] | None:
    """The rows of a job this configuration already finished (None when not, or with other settings)."""
    path = job / ROWS
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    return saved["rows"] if saved.get("key") == job_key(config, method, attribute) else None


def save_rows(config: ExperimentConfig, job: Path, method: str, attribute: str, rows: list[dict]) -> list[dict]:
    write_json(job / ROWS, {"key": job_key(config, method, attribute), "rows": rows})
    return rows


def run_job(config: ExperimentConfig, method: str, ref: Reference) -> list[dict]:
    """Train `method` on `ref`, generate the λ sweep and score it; a job already done is read back."""
    job = Path(config.out) / "runs" / method / ref.id
    done = finished_rows(config, job, method, ref.attribute)
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
        return _rows(_generate_words(config, ref, out), ref, method, world)
    train_config = TrainConfig(
        image=str(image),
        class_name=ref.class_name,
        attribute=ref.attribute,
        model=config.model,
        out=str(out / "ckpt"),
        **(WORLD.train | {"checkpoint_every": 0, "device": "cpu"})
        | {k: v for k, v in config.settings(method, ref.attribute).items() if k != "lam"}
        | METHODS[method]
        | reference_options(method, ref),
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


def is_compose(method: str) -> bool:
    return method.startswith("compose")


def compose_name(method: str, switch: float = 0.0) -> str:
    """A composition's row: `compose/<method>`, or `compose@<s>/<method>` with a timestep switch s."""
    return f"compose@{switch:g}/{method}" if switch else f"compose/{method}"


def run_compose(
    config: ExperimentConfig, method: str, shape_ref: Reference, look_ref: Reference, switch: float = 0.0
) -> list[dict]:
    """`method`'s shape and appearance checkpoints in one prompt (`switch`: split by timestep): score the shape
    and the look."""
    from ostaf.models import load_pipeline

    ckpts = [str(Path(config.out) / "runs" / method / r.id / "ckpt") for r in (shape_ref, look_ref)]
    pair = f"{shape_ref.id}+{look_ref.id}"
    name = compose_name(method, switch)
    job = Path(config.out) / "runs" / name / pair
    done = finished_rows(config, job, name, "shape+appearance")
    if done is not None:
        return done
    pipe = load_pipeline(config.model)
    result = _generate(config, pipe, ckpts, COMPOSE_PROMPT, config.lams, job, name, switch)
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


# -- the whole experiment -----------------------------------------------------------------------


LamOf = Callable[[str, str], float]  # (method, attribute) → the λ its table row reads


def per_reference(rows: list[dict], lam_of: LamOf) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """(method, attribute) → reference → each metric's mean over seeds at the method's λ (any λ for untrained
    rows)."""
    groups: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for row in rows:
        if row["method"] in UNTRAINED or row["lam"] == lam_of(row["method"], row["attribute"]):
            for metric in (*METRICS, "train_seconds"):
                if row.get(metric) is not None:
                    groups[(row["method"], row["attribute"])][row["reference"]][metric].append(row[metric])
    return {
        key: {ref: {m: float(np.mean(v)) for m, v in per.items()} for ref, per in by_ref.items()}
        for key, by_ref in groups.items()
    }


def controllability(rows: list[dict]) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """(method, attribute) → reference → `lam_rho` (Spearman of λ with the attribute metric, signed so
    that + means λ strengthens the attribute) and `text_drop` (text control at min λ minus at max λ)."""
    sweeps: dict = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["method"] not in UNTRAINED and not is_compose(row["method"]):
            sweeps[(row["method"], row["attribute"])][row["reference"]].append(row)
    out: dict = defaultdict(dict)
    for key, by_ref in sweeps.items():
        metric, sign = LAMBDA_METRIC[key[1]]
        for ref, members in by_ref.items():
            lams = sorted({m["lam"] for m in members})
            if len(lams) < 2:
                continue
            text = {lam: np.mean([m["text_control"] for m in members if m["lam"] == lam]) for lam in lams}
            out[key][ref] = {
                "lam_rho": spearman([m["lam"] for m in members], [sign * m[metric] for m in members]),
                "text_drop": float(text[lams[0]] - text[lams[-1]]),
            }
    return out


def summarise(rows: list[dict], lam: float | LamOf = 1.0) -> list[dict]:
    """One row per (method, attribute) at its λ (`lam`, or `lam(method, attribute)`): each metric's mean over
    references (seeds averaged first) with its 95 % bootstrap interval over references (`<metric>_ci`), and the
    λ-control columns."""
    lam_of = lam if callable(lam) else (lambda method, attribute: lam)
    control = controllability(rows)
    table = []
    for (method, attribute), by_ref in per_reference(rows, lam_of).items():
        entry: dict[str, Any] = {"method": method, "attribute": attribute, "n": len(by_ref)}
        if method not in UNTRAINED:
            entry["lam"] = lam_of(method, attribute)
        per_ref = list(by_ref.values()) + [control.get((method, attribute), {}).get(r, {}) for r in by_ref]
        for metric in (*METRICS, *CONTROL):
            values = [v[metric] for v in per_ref if metric in v]
            if values:
                interval = bootstrap_interval(values)
                entry[metric] = round(interval.mean, 3)
                entry[f"{metric}_ci"] = [round(interval.low, 3), round(interval.high, 3)]
        seconds = [v["train_seconds"] for v in by_ref.values() if v.get("train_seconds")]
        if seconds:
            entry["train_s"] = round(float(np.mean(seconds)), 1)
        table.append(entry)
    order = ["chance", "floor", "words", *METHODS, "limit"]
    return sorted(
        table,
        key=lambda e: (order.index(e["method"]) if e["method"] in order else len(order), e["method"], e["attribute"]),
    )


def table_markdown(table: list[dict]) -> str:
    """One Markdown table per attribute; a cell is `mean [95 % interval]`."""

    def cell(entry: dict, key: str) -> str:
        if key not in entry:
            return "–"
        low_high = entry.get(f"{key}_ci")
        if low_high is None or low_high[0] == low_high[1]:
            return f"{entry[key]:.3g}"
        return f"{entry[key]:.3g} [{low_high[0]:.2g}, {low_high[1]:.2g}]"

    parts = []
    for attribute, columns in COLUMNS.items():
        entries = [e for e in table if e["attribute"] == attribute]
        if not entries:
            continue
        keys = ["method", "n", "lam", *columns, *CONTROL, "train_s"]
        plain = ("method", "n", "lam", "train_s")
        rows = [{k: (e[k] if k in plain and k in e else cell(e, k)) for k in keys} for e in entries]
        parts.append(f"### {attribute}\n\n{to_markdown(rows, keys)}")
    return "\n".join(parts) + (
        "\n`lam`: the λ of a trained method's row; `words`: the base model told the attribute in words; "
        "`chance`: an answer with a wrong attribute, averaged over all of them (exact, by rendering); unnamed "
        "references (`--kind seen|novel`): `words` names the nearest word, `floor` is that word rendered exactly, "
        "`limit` the reference through the model's VAE, `gap_closed` = (score − floor) / (limit − floor). `[a, b]`: "
        "95 % bootstrap interval over references. `lam_rho`: Spearman correlation of λ with the attribute metric "
        "over the sweep (+1: λ strengthens the attribute); `text_drop`: text control at the smallest λ minus at "
        "the largest.\n"
    )


def curves_of(rows: list[dict]) -> dict[str, dict[str, dict[float, float]]]:
    """method/attribute → metric → λ → mean (the `words` ceiling has no λ)."""
    return lambda_curves(rows, lambda r: None if r["method"] == "words" else f"{r['method']}/{r['attribute']}", METRICS)


def plot_curves(curves: dict, path: Path) -> Path:
    shown = {name: c for name, c in curves.items() if not name.startswith(("token", "finetune"))}  # λ does nothing
    return plot_lambda_curves(shown, METRICS, path, panel_width=4.5)


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
    """Every method must train on every asked attribute (views exist for shape and appearance only): one error
    before any work."""
    from ostaf.view_words import VIEW_SLOTS

    refused = [
        f"{m}/{a}" for m in config.methods for a in config.attributes if METHODS[m].get("views") and a not in VIEW_SLOTS
    ]
    if refused:
        raise OstafError(
            f"{', '.join(refused)}: views exist for {' and '.join(VIEW_SLOTS)} only; pass --attributes "
            f"{' '.join(VIEW_SLOTS)} with these methods"
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
            (i, ("compose", config, m, s, a, switch))
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
        return COMPOSE_PROMPT
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
        lam = row["lam"] if reads_lambda(row["method"]) else 1.0  # the one λ `_generate` rendered
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


def with_gap_closed(rows: list[dict], bounds: list[dict]) -> list[dict]:
    """Each row of an unnamed reference with `gap_closed` (`references.gap_closed`) where it has a gap."""
    ends: dict[str, dict[str, float]] = defaultdict(dict)
    for row in bounds:
        metric = LAMBDA_METRIC[row["attribute"]][0]
        ends[row["reference"]][row["method"]] = row[metric]
    out = []
    for row in rows:
        end = ends.get(row["reference"])
        if end is None or is_compose(row["method"]) or row["method"] == "chance":
            out.append(row)
            continue
        closed = gap_closed(row["attribute"], row[LAMBDA_METRIC[row["attribute"]][0]], end["floor"], end["limit"])
        out.append(row | ({"gap_closed": closed} if closed is not None else {}))
    return out


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
                intervals = {f"{k}_low": ci[0] for k, ci in row.items() if k.endswith("_ci")}
                intervals |= {f"{k}_high": ci[1] for k, ci in row.items() if k.endswith("_ci")}
                child.log_metrics({k: v for k, v in row.items() if isinstance(v, float)} | intervals, step=0)
                by_lam: dict[float, dict[str, float]] = defaultdict(dict)
                for metric, values in curves.get(name, {}).items():
                    for lam, value in values.items():
                        by_lam[lam][metric] = value
                tracking.log_lambda_curves(child, by_lam)
        parent.log_metrics({"seconds": seconds}, step=0)
        for name in ("table.md", "results.json", "curves.png"):
            parent.log_artifact(out / name)
        for grid in sorted((out / "runs").glob("*/*/grid.png")):
            parent.log_artifact(grid, f"grids/{grid.parent.parent.name}")
