"""The pipeline's steps as plain functions: folders in, folders out, MLflow by run id.

Each KFP component in `components/` is a thin call to one of these, so everything
worth testing runs here without KFP. A step writes only into its own output folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ostaf import tracking
from ostaf.attributes import get_attribute
from ostaf.benchmark import BenchmarkItem, copy_items, load_manifest, pull, write_manifest
from ostaf.config import GenerateConfig, TrainConfig, normalize_options
from ostaf.errors import OstafError
from ostaf.io import write_json
from ostaf.report import TABLE_METRICS
from ostaf.world.references import GROUP as WORLD_GROUP

ITEM_FILE = "item.json"
SCORES_FILE = "scores.json"
# Options set per item or per step, never by the pipeline's option dicts.
PER_ITEM_TRAIN = ("image", "class_name", "attribute", "out", "model")
PER_ITEM_GENERATE = ("ckpt", "prompt", "out", "model")


def default_options(cls: type) -> dict[str, Any]:
    """A config's defaults minus its per-item fields: the KFP parameter dict for that config."""
    from dataclasses import MISSING, fields

    skip = PER_ITEM_TRAIN if cls is TrainConfig else PER_ITEM_GENERATE
    out = {}
    for f in fields(cls):
        if f.name not in skip:
            out[f.name] = f.default if f.default is not MISSING else f.default_factory()
    return out


def start_pipeline_run(
    pipeline: str, model: str, train_options: dict, generate_options: dict, kfp_run_id: str = ""
) -> str:
    """The parent MLflow run of one pipeline run, with the run's options as params."""
    tracking.check_reachable()
    params = {
        "model": model,
        "train": normalize_options(TrainConfig, train_options),
        "generate": normalize_options(GenerateConfig, generate_options),
    }
    tags = {**tracking.provenance_tags(), "kfp_run_id": kfp_run_id, "pipeline": pipeline}
    return tracking.start_run(pipeline, params=params, tags=tags).run_id


def select_benchmark(source: str, dest: str, attributes: list[str], ids: list[str], per_attribute: int) -> list[str]:
    """Copy the chosen benchmark items into `dest`; return their ids (the fan-out list)."""
    folder = pull(source)
    items = load_manifest(folder).select(attributes or None, ids or None, per_attribute)
    copy_items(folder, dest, items)
    return [i.id for i in items]


def import_reference(image: str, attribute: str, class_name: str, prompts: list[str], dest: str) -> list[str]:
    """A one-item benchmark made from a user's own image (the single-image pipeline's input)."""
    from ostaf.images import load_image, save_image

    try:
        item = BenchmarkItem(
            id="reference",
            attribute=attribute,
            image="reference.png",
            class_name=class_name,
            prompts=prompts,
            source=str(image),
            license="user-provided",
        )
    except ValidationError as err:
        raise OstafError(f"reference {image}: {err.errors()[0]['msg']}") from None
    save_image(load_image(image), Path(dest) / item.image)
    write_manifest(dest, {"name": "reference", "version": 1, "items": [item.model_dump(mode="json")]})
    return [item.id]


def preprocess_item(benchmark: str, item_id: str, model: str, train_options: dict, dest: str) -> None:
    """SAM foreground + augmentation plan of one item, with its metadata in item.json."""
    from ostaf.models import model_resolution
    from ostaf.preprocess import preprocess
    from ostaf.segment import load_sam

    item = load_manifest(benchmark).item(item_id)
    config = train_config(dest, item, model, train_options, out=dest)
    resolution = config.resolution or model_resolution(model)
    sam = load_sam(config.sam) if config.segment else None
    preprocess(Path(benchmark) / item.image, item.attribute, resolution, config.augment_bank, config.seed, sam).save(
        dest
    )
    write_json(Path(dest) / ITEM_FILE, item.model_dump(mode="json"))


def init_token(reference: str, model: str, train_options: dict, dest: str) -> None:
    """The token-init step: the reference's CLIP image embedding, stored beside it."""
    from ostaf.image_encoder import load_image_encoder, save_image_embedding
    from ostaf.images import load_image

    shutil.copytree(reference, dest, dirs_exist_ok=True)
    config = train_config(dest, read_item(dest), model, train_options, out=dest)
    if config.token_init == "clip":
        encoder = load_image_encoder(model, seed=config.seed)
        save_image_embedding(dest, encoder.embed(load_image(Path(dest) / "reference.png")))


def train_item(reference: str, model: str, train_options: dict, parent_run_id: str, dest: str) -> str:
    """Train on one item in a nested MLflow run; log the loss curve and the model. Returns the run id."""
    from ostaf.train import train

    item = read_item(reference)
    config = train_config(reference, item, model, train_options, out=dest)
    logger = tracking.start_run(
        item["id"],
        parent_run_id=parent_run_id,
        params=config.to_dict(),
        tags={"item": item["id"], "attribute": item["attribute"], **tracking.provenance_tags()},
    )
    result = train(config, tracker=logger)
    logger.log_params({"seconds_per_step": round(result.seconds_per_step, 4)})
    tracking.log_checkpoint_model(logger, result.out, item["attribute"])
    return logger.run_id


def generate_item(checkpoint: str, reference: str, generate_options: dict, run_id: str, dest: str) -> None:
    """The λ sweep over the item's prompts; grids go to the item's MLflow run."""
    from ostaf.generate import generate, slug

    item = read_item(reference)
    config = GenerateConfig.from_dict(
        {**generate_options, "ckpt": [checkpoint], "prompt": item["prompts"], "out": dest}
    )
    results = generate(config)
    logger = tracking.RunLogger(run_id) if run_id else None
    for result in results:
        if logger:
            logger.log_image(result.grid, f"grids/{slug(result.prompt)}.png")


def evaluate_item(images: str, reference: str, metric_models: str, run_id: str, dest: str) -> dict[str, float]:
    """Metrics per (prompt, λ) into scores.json; per-λ means and a curve plot to MLflow."""
    from ostaf.evaluate import by_lambda, evaluate_sweep, load_metric_models
    from ostaf.preprocess import load_preprocessed
    from ostaf.report import plot_curves

    item = read_item(reference)
    rows = evaluate_sweep(images, load_preprocessed(reference), load_metric_models(item["attribute"], metric_models))
    if item.get("group") == WORLD_GROUP:  # exact ground truth: add the world's own metrics
        from ostaf.world.references import score_sweep

        exact = score_sweep(images, item)
        rows = [row | exact[(row["prompt"], row["lam"])] for row in rows]
    rows = [{"item": item["id"], "attribute": item["attribute"], **row} for row in rows]
    write_json(Path(dest) / SCORES_FILE, rows)
    means = by_lambda(rows)
    if run_id:
        logger = tracking.RunLogger(run_id)
        for index, (lam, metrics) in enumerate(means.items()):
            logger.log_metrics({f"{k}/lam_{lam:g}": v for k, v in metrics.items()}, step=index)
        tracking.log_plot(logger, lambda p: plot_curves(rows, p), "plots/metrics_vs_lambda.png")
        logger.end()
    top = means[max(means)]
    return {k: v for k, v in top.items() if k in TABLE_METRICS}


def aggregate(score_dirs: list[str], parent_run_id: str, dest: str, lam: float | None = None) -> str:
    """The paper-style table over every item (at the largest λ unless given); closes the parent run."""
    from ostaf.report import paper_table, plot_curves, to_markdown, write_table

    rows = [row for d in score_dirs for row in json.loads((Path(d) / SCORES_FILE).read_text())]
    lam = max(r["lam"] for r in rows) if lam is None else lam
    table = paper_table(rows, lam=lam)
    write_table(table, dest)
    write_json(Path(dest) / "scores.json", rows)
    plot_curves(rows, Path(dest) / "metrics_vs_lambda.png")
    markdown = f"Attribute Benchmark at λ = {lam:g}\n\n{to_markdown(table)}"
    if parent_run_id:
        logger = tracking.RunLogger(parent_run_id)
        logger.log_artifact(dest, "report")
        for row in table:
            logger.log_metrics({f"{row['attribute']}/{k}": v for k, v in row.items() if k not in ("attribute",)}, 0)
        logger.end()
    return markdown


def read_item(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / ITEM_FILE).read_text())


def train_config(image: str, item: BenchmarkItem | dict, model: str, options: dict, out: str) -> TrainConfig:
    item = item if isinstance(item, dict) else item.model_dump(mode="json")
    get_attribute(item["attribute"])
    return TrainConfig.from_dict(
        {
            **options,
            "image": str(image),
            "class_name": item["class_name"],
            "attribute": item["attribute"],
            "model": model,
            "out": out,
        }
    )
