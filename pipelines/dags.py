"""The two pipelines, built by factories so that compile-time settings stay arguments.

attribute_personalization: one reference image + attribute → preprocess, init-token,
                           train, generate (λ sweep), evaluate (+ the one-row table)
attribute_benchmark:       the same branch fanned out over the manifest → aggregate

Both open a parent MLflow run first and close it in an exit handler with the pipeline's
final state, so a failed branch never leaves it RUNNING. (KFP allows no pipeline output from
inside an exit handler: the table is the `aggregate` task's Markdown output, the report its HTML one.)

Parameters: the options people change are typed top-level parameters — every config field marked
`opt(pipeline=True)` (`components.options.typed_parameters`), with its help as the description and its
default (or the compile-time recipe's value) — beside `recipe` and an `extra_options` dict for the rest.
The first task resolves them into one options artifact that every later step reads. There is no second list
of options or defaults here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from kfp import dsl

from components import steps as c
from components.options import EXTRA_HELP
from ostaf.config import TrainConfig
from ostaf.options import reference_inputs, typed_parameters
from ostaf.recipes import RECIPES, layered
from pipelines.cluster import on_cluster

MODEL = TrainConfig.__dataclass_fields__["model"].default
RETRIES = 2  # steps that write only their own output folder are retried on a cluster (pod loss, preemption)
PERSONALIZATION_PARALLELISM = 1  # one reference: one branch
BACKOFF = "30s"
EMPTY = inspect.Parameter.empty


def retried(task: dsl.PipelineTask, retries: int) -> dsl.PipelineTask:
    return task.set_retry(num_retries=retries, backoff_duration=BACKOFF) if retries else task


def item_branch(benchmark, item_id, model, options, tracking, retries: int):
    """preprocess → init-token → train → generate → evaluate for one item; returns the evaluate task."""
    pre = on_cluster(c.preprocess(benchmark=benchmark, item_id=item_id, model=model, options=options), weights=True)
    token = on_cluster(c.init_token(reference=pre.outputs["reference"], model=model, options=options), weights=True)
    trained = on_cluster(
        c.train(reference=token.outputs["token"], model=model, options=options, tracking=tracking),
        weights=True,
        gpu=True,
    )
    images = on_cluster(
        c.generate(
            checkpoint=trained.outputs["checkpoint"],
            reference=token.outputs["token"],
            options=options,
            run_id=trained.outputs["Output"],
        ),
        weights=True,
        gpu=True,
    )
    scores = on_cluster(
        c.evaluate(
            images=images.outputs["images"],
            reference=token.outputs["token"],
            model=model,
            options=options,
            run_id=trained.outputs["Output"],
        ),
        weights=True,
    )
    for task in (pre, token, trained, images, scores):  # training resumes; every step writes only its own folder
        retried(task, retries)
    return scores


def start_tracking(pipeline: str, args: dict[str, Any], compiled_defaults: dict[str, Any]) -> dsl.PipelineTask:
    """The task that resolves the run's options and opens its parent MLflow run, tagged with the KFP run id."""
    typed = {p.name: args[p.name] for p in typed_parameters()}
    return on_cluster(
        c.start_tracking(
            pipeline=pipeline,
            model=args["model"],
            recipe=args["recipe"],
            extra_options=args["extra_options"],
            compiled_defaults=compiled_defaults,
            kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            provenance=args["provenance"],
            **typed,
        )
    )


def finish_tracking() -> dsl.PipelineTask:
    """The exit task: closes the parent run (found by the KFP run id) with the pipeline's final status."""
    return on_cluster(c.finish_tracking(kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER))


def fan_out(chosen: dsl.PipelineTask, args: dict, start: dsl.PipelineTask, parallelism: int, retries: int):
    """One branch per item id that `chosen` returned, then the aggregate table over all of them."""
    tracking = start.outputs["tracking"]
    with dsl.ParallelFor(chosen.outputs["Output"], parallelism=parallelism) as item_id:
        scores = item_branch(
            chosen.outputs["benchmark"],
            item_id,
            args["model"],
            start.outputs["options"],
            tracking,
            retries,
        )
    return on_cluster(c.aggregate(scores=dsl.Collected(scores.outputs["scores"]), tracking=tracking))


# -- typed signatures ---------------------------------------------------------------------------------------


Param = tuple[str, type, Any, str]  # (name, annotation, default or EMPTY, description)


def common_parameters(recipe: list[str], model: str) -> list[Param]:
    """What both pipelines take after their own inputs: the model, recipe, the typed options, `extra_options` and
    provenance."""
    chosen = layered(recipe)
    typed = [(p.name, p.annotation, p.default, p.help) for p in typed_parameters(chosen)]
    return [
        ("model", str, model, TrainConfig.__dataclass_fields__["model"].metadata["help"]),
        (
            "recipe",
            list,
            list(recipe),
            f"named recipes whose option values come first (later ones win): {', '.join(RECIPES)}; a typed "
            "parameter left at its default takes the recipe's value",
        ),
        *typed,
        ("extra_options", dict, {}, EXTRA_HELP),
        ("provenance", dict, {}, "tags for the parent MLflow run (git commit, DVC hash: the CLI fills them in)"),
    ]


def typed_pipeline(name: str, description: str, params: list[Param], body: Callable[[dict[str, Any]], None]):
    """A KFP pipeline whose signature is `params` (typed, with defaults and descriptions), built from lists
    rather than written out, since the typed options come from the configs' field metadata."""
    names = [p[0] for p in params]

    def pipeline_func(*args):  # KFP calls a pipeline function with its parameter channels in signature order
        body(dict(zip(names, args, strict=True)))

    pipeline_func.__signature__ = inspect.Signature(
        [
            inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d, annotation=a)
            for n, a, d, _ in params
        ]
    )
    pipeline_func.__annotations__ = {n: a for n, a, _, _ in params}
    pipeline_func.__name__ = name.replace("-", "_")
    pipeline_func.__doc__ = f"{description}\n\nArgs:\n" + "".join(f"    {n}: {h}\n" for n, _, _, h in params)
    return dsl.pipeline(name=name, description=description)(pipeline_func)


def compiled_defaults(params: list[Param]) -> dict[str, Any]:
    """The typed options' defaults as compiled: a value that differs from it was set by the user."""
    typed = {p.name for p in typed_parameters()}
    return {n: d for n, _, d, _ in params if n in typed}


def build_personalization(retries: int = RETRIES, recipe: list[str] | None = None, model: str = MODEL):
    own = [(i.name, i.annotation, EMPTY, i.help) for i in reference_inputs()]  # required: no run without them
    params: list[Param] = [*own, *common_parameters(recipe or [], model)]
    defaults = compiled_defaults(params)

    def body(args: dict[str, Any]) -> None:
        with dsl.ExitHandler(finish_tracking(), name="tracked"):
            start = start_tracking("attribute-personalization", args, defaults)
            ref = on_cluster(
                c.import_reference(**{i.name: args[i.name] for i in reference_inputs()}),
                weights=True,  # on a cluster the image is a path on the mounted volume,
                object_store=True,  # or an s3:// URI (what `submit` uploads a local file to)
            )
            fan_out(ref, args, start, parallelism=PERSONALIZATION_PARALLELISM, retries=retries)

    return typed_pipeline("attribute-personalization", "One reference image, one attribute, λ sweep.", params, body)


def build_benchmark(
    parallelism: int = 4,
    retries: int = RETRIES,
    recipe: list[str] | None = None,
    model: str = MODEL,
    source: str = "dvc:/app",
    per_attribute: int = 0,
):
    params: list[Param] = [
        ("source", str, source, "benchmark folder, dvc:<repo>[@remote], or world (held-out world references)"),
        ("attributes", list, [], "attributes to run (empty: all)"),
        ("item_ids", list, [], "benchmark item ids to run (empty: by attribute)"),
        ("per_attribute", int, per_attribute, "items per attribute (0: all)"),
        *common_parameters(recipe or [], model),
    ]
    defaults = compiled_defaults(params)

    def body(args: dict[str, Any]) -> None:
        with dsl.ExitHandler(finish_tracking(), name="tracked"):
            start = start_tracking("attribute-benchmark", args, defaults)
            chosen = on_cluster(
                c.select_items(
                    source=args["source"],
                    attributes=args["attributes"],
                    item_ids=args["item_ids"],
                    per_attribute=args["per_attribute"],
                    tracking=start.outputs["tracking"],
                ),
                object_store=True,
            )
            fan_out(chosen, args, start, parallelism, retries)

    return typed_pipeline("attribute-benchmark", "OSTAF over the Attribute Benchmark → paper table.", params, body)
