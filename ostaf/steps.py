"""The pipeline's steps as plain functions: folders in, folders out, MLflow by run id.

Each KFP component in `components/` is a thin call to one of these, so everything
worth testing runs here without KFP. A step writes only into its own output folder,
and every step that writes into an MLflow run opens and closes it (`tracking.active`).
Option dicts arrive typed (the components undo KFP's number conversion) and are merged
with each item's own fields by `TrainConfig.for_item` / `GenerateConfig.for_item`.

Imports are at the top except the heavy stacks (torch, diffusers, SAM, open_clip) that only
some steps need: each KFP task is its own process, and select/aggregate should not pay ~7 s
for torch.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from ostaf import data, groups, tracking
from ostaf.benchmark import BenchmarkItem, copy_items, load_manifest, write_manifest
from ostaf.config import PER_ATTRIBUTE, EvaluateConfig, GenerateConfig, TrainConfig, for_attribute, validate_options
from ostaf.errors import OstafError
from ostaf.html_report import PLOT, SCORES_FILE, collect_visuals, grid_name, write_html
from ostaf.images import load_image, save_image
from ostaf.io import write_json
from ostaf.objects import download, is_object_uri, split_uri
from ostaf.report import (
    BEST_LAM_NOTE,
    ITEM_KEYS,
    ITEM_NOTE,
    NOT_COMPUTED,
    best_lambda,
    best_lambdas,
    by_lambda,
    item_table,
    missing_paper_metrics,
    paper_table,
    plot_curves,
    strength_metrics,
    table_metrics,
    to_markdown,
    write_table,
)
from ostaf.sweep import SweepIndex, slug

T = TypeVar("T")

ITEM_FILE = "item.json"
RUN_FILE = "run.json"
REPORT_HTML = "report.html"  # the aggregate's self-contained page (KFP's Output[HTML], MLflow's report/)


STEP_WORK_MARK = "ostaf-step-work"  # `<mark> <step> <seconds> s (torch threads N)` in a task's log: its own time


def timed_step(function: Callable[..., T]) -> Callable[..., T]:
    """Print the step's own time (its imports of torch, diffusers, mlflow included) into the task's log.

    What a task takes beyond it — the process, the KFP executor, the component's import — is the
    pipeline's fixed cost per task, which `benchmarks/startup.py` reads from the log.
    """

    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> T:
        started = time.perf_counter()
        exit_without_teardown_in_kfp_task()
        try:
            return function(*args, **kwargs)
        finally:
            torch = sys.modules.get("torch")  # the threads it ran on (run-local shares the cores among branches)
            threads = f" (torch threads {torch.get_num_threads()})" if torch is not None else ""
            print(f"{STEP_WORK_MARK} {function.__name__} {time.perf_counter() - started:.3f} s{threads}", flush=True)

    return timed


def exit_without_teardown_in_kfp_task() -> None:
    """Let a KFP task process end right after its executor wrote the outputs.

    Tearing down an interpreter that holds torch, diffusers, mlflow and a model takes ~2 s (measured:
    13.1 s wall for 10.8 s of imports and loading), a fixed cost per task. Registered before the step
    imports anything, the handler runs after every other exit handler (mlflow's flush included), then
    skips only the module teardown: exit code 1 after an uncaught exception, else 0. Only in a KFP task
    (`kfp.dsl.executor_main`), never in a test runner or a user's process.
    """
    if Path(sys.argv[0]).name != "executor_main.py" or getattr(sys, "_ostaf_fast_exit", False):
        return
    sys._ostaf_fast_exit = True  # once per process
    failed: list[bool] = []
    previous_hook = sys.excepthook

    def note_failure(*exc_info: Any) -> None:
        failed.append(True)
        previous_hook(*exc_info)

    def leave() -> None:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1 if failed else 0)

    sys.excepthook = note_failure
    atexit.register(leave)


def start_pipeline_run(
    pipeline: str,
    model: str,
    options: dict[str, dict],
    kfp_run_id: str = "",
    provenance: dict[str, str] | None = None,
) -> str:
    """The parent MLflow run of one pipeline run, with the run's options (by section: train, generate, evaluate)
    as params; closed by `finish_pipeline_run`."""
    from ostaf.options import SECTIONS

    tracking.check_reachable()
    params: dict[str, Any] = {"model": model}
    for section, cls in SECTIONS.items():  # an attribute's own values as e.g. train.per_attribute.shape.views
        given = options.get(section, {})
        params[section] = validate_options(cls, for_attribute(given, None)) | _per_attribute(cls, given)
    tags = {**(provenance or {}), "kfp_run_id": kfp_run_id, "pipeline": pipeline}
    return tracking.start_run(pipeline, params=params, tags=tags).run_id


def _per_attribute(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """A section's per-attribute values, each checked against the config (names, types, choices)."""
    changed = options.get(PER_ATTRIBUTE, {})
    for attribute in changed:
        validate_options(cls, for_attribute(options, attribute))
    return {PER_ATTRIBUTE: changed} if changed else {}


@timed_step
def finish_pipeline_run(kfp_run_id: str, pipeline_state: str) -> str:
    """The pipeline's exit step: its parent run ends FINISHED if the pipeline succeeded, else FAILED.

    Returns the MLflow status set, or a note that no parent run was opened (tracking failed to start)."""
    run_id = tracking.find_run("kfp_run_id", kfp_run_id)
    if run_id is None:
        return f"no MLflow run is tagged kfp_run_id={kfp_run_id} (tracking did not start)"
    return tracking.finish_run(run_id, pipeline_state)


@timed_step
def select_benchmark(
    source: str, dest: str, attributes: list[str], ids: list[str], per_attribute: int, parent_run_id: str = ""
) -> list[str]:
    """Copy the chosen benchmark items into `dest`; return their ids (the fan-out list). The benchmark is the
    parent run's input (`mlflow.log_input`; digest: the DVC hash of the data, or the manifest's own hash)."""
    folder = data.pull(source)
    manifest = load_manifest(folder)
    items = manifest.select(attributes or None, ids or None, per_attribute)
    copy_items(folder, dest, items)
    if parent_run_id:
        counts = {a: sum(i.attribute == a for i in items) for a in sorted({i.attribute for i in items})}
        tracking.RunLogger(parent_run_id).log_input(
            manifest.name, data.digest(source, folder), source, "benchmark", {"items": len(items), **counts}
        )
    return [i.id for i in items]


def reference_item(image: str, attribute: str, class_name: str, prompts: list[str]) -> BenchmarkItem:
    """The single-image pipeline's item, checked (attribute, prompts with its placeholder): one clear error."""
    try:
        return BenchmarkItem(
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


@timed_step
def import_reference(image: str, attribute: str, class_name: str, prompts: list[str], dest: str) -> list[str]:
    """A one-item benchmark made from a user's own image (the single-image pipeline's input)."""
    item = reference_item(image, attribute, class_name, prompts)
    if is_object_uri(image):  # s3:// or minio://: what `submit` uploaded, or the user's own
        with tempfile.TemporaryDirectory() as tmp:
            loaded = load_image(download(image, Path(tmp) / Path(split_uri(image)[1]).name))
    else:
        loaded = load_image(image)
    save_image(loaded, Path(dest) / item.image)
    write_manifest(dest, {"name": "reference", "version": 1, "items": [item.model_dump(mode="json")]})
    return [item.id]


@timed_step
def preprocess_item(benchmark: str, item_id: str, model: str, train_options: dict, dest: str) -> None:
    """SAM foreground + augmentation plan of one item, with its metadata in item.json."""
    from ostaf.model_spec import model_resolution
    from ostaf.preprocess import load_reference

    item = load_manifest(benchmark).item(item_id).model_dump(mode="json")
    image = str(Path(benchmark) / item["image"])
    config = TrainConfig.for_item(item, train_options, image=image, model=model, out=dest)
    load_reference(config, config.resolution or model_resolution(model)).save(dest)
    write_json(Path(dest) / ITEM_FILE, item)


@timed_step
def init_token(reference: str, model: str, train_options: dict, dest: str) -> None:
    """The token-init step: the reference's CLIP image embedding, stored beside it."""
    from ostaf.image_encoder import load_image_encoder, save_image_embedding

    shutil.copytree(reference, dest, dirs_exist_ok=True)
    config = TrainConfig.for_item(read_item(dest), train_options, image=dest, model=model, out=dest)
    if config.token_init == "clip":
        encoder = load_image_encoder(model, seed=config.seed)
        save_image_embedding(dest, encoder.embed(load_image(Path(dest) / "reference.png")))


@timed_step
def train_item(reference: str, model: str, train_options: dict, parent_run_id: str, dest: str) -> str:
    """Train on one item in a nested MLflow run; log the loss curve and the model. Returns the run id."""
    from ostaf.train import train

    item = read_item(reference)
    config = TrainConfig.for_item(item, train_options, image=reference, model=model, out=dest)
    logger = tracking.child_run(
        parent_run_id, item["id"], params=config.to_dict(), tags={"item": item["id"], "attribute": item["attribute"]}
    )
    with tracking.active(logger, reopen=True):
        for name in ("reference.png", "mask.png"):  # what the run learned from, as training saw it
            if (Path(reference) / name).exists():
                logger.log_artifact(Path(reference) / name, "reference")
        result = train(config, tracker=logger)
        logger.log_params({"seconds_per_step": round(result.seconds_per_step, 4)})
        if result.nearest_words:  # --nn-contrastive: where e* ended up among the words
            logger.log_params({"nearest_words": ", ".join(result.nearest_words)})
        logger.log_model(result.out, item["attribute"])
    return logger.run_id


@timed_step
def generate_item(checkpoint: str, reference: str, generate_options: dict, run_id: str, dest: str) -> None:
    """The λ sweep over the item's prompts; grids go to the item's MLflow run."""
    from ostaf.generate import generate

    config = GenerateConfig.for_item(
        read_item(reference), generate_options, ckpt=[checkpoint], out=dest, reference_image=reference
    )
    if not run_id:
        generate(config)
        return
    with tracking.active(tracking.RunLogger(run_id), reopen=True) as logger:
        for index, result in enumerate(generate(config)):  # by index too: the same names in every item's run
            logger.log_image(result.grid, f"grids/{grid_name(index)}")
            logger.log_image(result.grid, f"grids/{slug(result.prompt)}.png")


@timed_step
def evaluate_item(
    images: str, reference: str, model: str, evaluate_options: dict, run_id: str, dest: str
) -> dict[str, float]:
    """Metrics per (prompt, λ) into scores.json; per-λ means and a curve plot to MLflow. Returns the largest
    λ's means (the KFP metrics)."""
    from ostaf.evaluate import evaluate_sweep, load_metric_models, metric_spec
    from ostaf.preprocess import load_preprocessed

    item = read_item(reference)
    config = EvaluateConfig.from_dict(
        validate_options(EvaluateConfig, for_attribute(evaluate_options, item["attribute"]))
    )
    models = load_metric_models(item["attribute"], metric_spec(config, model))
    rows = evaluate_sweep(images, load_preprocessed(reference), models)
    group = groups.of_item(item)
    if group is not None:  # exact ground truth: add the group's own metrics
        exact = group.score_sweep(SweepIndex.read(images), item, model)
        rows = [row | exact[(row["prompt"], row["lam"])] for row in rows]
    rows = [{"item": item["id"], "attribute": item["attribute"], **row} for row in rows]
    write_json(Path(dest) / SCORES_FILE, rows)
    write_json(Path(dest) / RUN_FILE, {"run_id": run_id})  # which nested run (and registered model) the rows are of
    collect_visuals(images, reference, dest)  # the HTML report's reference, mask and grids (aggregate sees dest only)
    means = by_lambda(rows)
    plot = plot_curves(rows, Path(dest) / PLOT)  # the metrics that were computed
    best = best_lambda(means, item["attribute"])
    if run_id:
        with tracking.active(tracking.RunLogger(run_id), reopen=True) as logger:
            for index, (lam, metrics) in enumerate(means.items()):
                logger.log_metrics({f"{k}/lam_{lam:g}": v for k, v in metrics.items()}, step=index)
            tracking.log_lambda_curves(logger, means)  # the same as λ curves (MLflow's charts draw them)
            if best is not None:  # the table's rule: strongest attribute that keeps the prompt (report.best_lambda)
                logger.log_metrics({"best_lam": best[0], f"{best[1]}/best_lam": means[best[0]][best[1]]}, step=0)
            if plot:
                logger.log_artifact(plot, "plots")
    top = means[max(means)] if means else {}  # a user's image without metric weights: nothing was computed
    known = table_metrics()
    return {k: v for k, v in top.items() if k in known}


@timed_step
def aggregate(score_dirs: list[str], parent_run_id: str, dest: str, lam: float | None = None) -> str:
    """The paper-style table over every item (at the largest λ unless given), logged to the parent run."""
    by_dir = {d: json.loads((Path(d) / SCORES_FILE).read_text()) for d in score_dirs}  # each file read once
    rows = [row for item_rows in by_dir.values() for row in item_rows]
    lam = max(r["lam"] for r in rows) if lam is None else lam
    table = paper_table(rows, lam=lam)
    write_table(table, dest)
    write_json(Path(dest) / SCORES_FILE, rows)
    plot_curves(rows, Path(dest) / PLOT)
    write_html(score_dirs, table, lam, Path(dest) / REPORT_HTML, "ostaf: Attribute Benchmark")
    markdown = f"Attribute Benchmark at λ = {lam:g}\n\n{to_markdown(table)}"
    if missing_paper_metrics(rows):
        markdown += f"\n{NOT_COMPUTED}\n"
    items = item_table(rows, lam)
    if items:
        markdown += f"\n{to_markdown(items, [k for k in ITEM_KEYS if any(k in i for i in items)])}\n{ITEM_NOTE}\n"
    best = best_lambdas(rows)
    if best:
        markdown += f"\n{BEST_LAM_NOTE}\n" + "".join(
            f"- {item}: λ = {b:g} ({metric})\n" for item, (b, metric) in best.items()
        )
    if parent_run_id:
        logger = tracking.RunLogger(parent_run_id)
        logger.log_artifact(dest, "report")
        logger.log_params({"table_lam": lam})  # the λ every `<attribute>/<metric>` metric is at
        for row in table:
            logger.log_metrics({f"{row['attribute']}/{k}": v for k, v in row.items() if k not in ("attribute",)}, 0)
        for all_rows in by_dir.values():  # each item's key metrics at the table's λ, on the parent too
            item_rows = [r for r in all_rows if r["lam"] == lam]
            for row in paper_table(item_rows):
                item = item_rows[0]["item"]
                logger.log_metrics({f"{item}/{k}": v for k, v in row.items() if k not in ("attribute", "n")}, 0)
        for attribute, run_id in best_runs(by_dir).items():  # `models:/ostaf-<attribute>@best-<attribute>`
            tracking.set_best_alias(attribute, run_id)
        tracking.log_lambda_curves(  # the table at every λ, as λ curves
            logger,
            {
                sweep_lam: {
                    f"{row['attribute']}/{k}": v
                    for row in paper_table(rows, lam=sweep_lam)
                    for k, v in row.items()
                    if k not in ("attribute", "n")
                }
                for sweep_lam in {r["lam"] for r in rows}
            },
        )
    return markdown


def best_runs(by_dir: dict[str, list[dict]]) -> dict[str, str]:
    """attribute → the nested run of its best item (score folder → its rows): the strongest attribute metric at
    that item's best λ (the table's rule, `report.best_lambda`)."""
    best: dict[str, tuple[float, str]] = {}
    for folder, rows in by_dir.items():
        run = Path(folder) / RUN_FILE
        run_id = json.loads(run.read_text())["run_id"] if run.exists() else ""
        means = by_lambda(rows)
        found = best_lambda(means, rows[0]["attribute"]) if rows and run_id else None
        if found is None:
            continue
        lam, metric = found
        sign = next(sign for name, sign in strength_metrics(rows[0]["attribute"]) if name == metric)
        score = sign * means[lam][metric]
        if rows[0]["attribute"] not in best or score > best[rows[0]["attribute"]][0]:
            best[rows[0]["attribute"]] = (score, run_id)
    return {attribute: run_id for attribute, (_, run_id) in best.items()}


def read_item(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / ITEM_FILE).read_text())
