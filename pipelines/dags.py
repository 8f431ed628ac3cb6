"""The two pipelines, built by factories so that compile-time settings stay arguments.

attribute_personalization: one reference image + attribute → preprocess, init-token,
                           train, generate (λ sweep), evaluate (+ the one-row table)
attribute_benchmark:       the same branch fanned out over the manifest → aggregate

Both open a parent MLflow run first and close it in an exit handler with the pipeline's
final state, so a failed branch never leaves it RUNNING. (KFP allows no pipeline output from
inside an exit handler: the table is the `aggregate` task's Markdown output.) Parameter defaults come from the
config classes (`shared_defaults`, field defaults): there is no second list here.
"""

from kfp import dsl

from components import steps as c
from ostaf.config import EvaluateConfig, GenerateConfig, TrainConfig, shared_defaults
from pipelines.cluster import on_cluster

TRAIN_OPTIONS = shared_defaults(TrainConfig)
GENERATE_OPTIONS = shared_defaults(GenerateConfig)
MODEL = TrainConfig.__dataclass_fields__["model"].default
METRIC_MODELS = EvaluateConfig.__dataclass_fields__["metric_models"].default
RETRIES = 2  # steps that write only their own output folder are retried on a cluster (pod loss, preemption)
BACKOFF = "30s"


def retried(task: dsl.PipelineTask, retries: int) -> dsl.PipelineTask:
    return task.set_retry(num_retries=retries, backoff_duration=BACKOFF) if retries else task


def item_branch(benchmark, item_id, model, metric_models, train_options, generate_options, tracking, retries: int):
    """preprocess → init-token → train → generate → evaluate for one item; returns the evaluate task."""
    pre = on_cluster(
        c.preprocess(benchmark=benchmark, item_id=item_id, model=model, train_options=train_options), weights=True
    )
    token = on_cluster(
        c.init_token(reference=pre.outputs["reference"], model=model, train_options=train_options), weights=True
    )
    trained = on_cluster(
        c.train(reference=token.outputs["token"], model=model, train_options=train_options, tracking=tracking),
        weights=True,
        gpu=True,
    )
    images = on_cluster(
        c.generate(
            checkpoint=trained.outputs["checkpoint"],
            reference=token.outputs["token"],
            generate_options=generate_options,
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
            metric_models=metric_models,
            run_id=trained.outputs["Output"],
        ),
        weights=True,
    )
    for task in (pre, token, trained, images, scores):  # training resumes; every step writes only its own folder
        retried(task, retries)
    return scores


def start_tracking(pipeline: str, model, train_options, generate_options, provenance) -> dsl.PipelineTask:
    """The task that opens the pipeline's parent MLflow run, tagged with the KFP run id."""
    return on_cluster(
        c.start_tracking(
            pipeline=pipeline,
            model=model,
            train_options=train_options,
            generate_options=generate_options,
            kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            provenance=provenance,
        )
    )


def finish_tracking() -> dsl.PipelineTask:
    """The exit task: closes the parent run (found by the KFP run id) with the pipeline's final status."""
    return on_cluster(c.finish_tracking(kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER))


def fan_out(
    chosen: dsl.PipelineTask,
    model,
    metric_models,
    train_options,
    generate_options,
    tracking,
    parallelism: int,
    retries: int,
) -> dsl.PipelineTask:
    """One branch per item id that `chosen` returned, then the aggregate table over all of them."""
    with dsl.ParallelFor(chosen.outputs["Output"], parallelism=parallelism) as item_id:
        scores = item_branch(
            chosen.outputs["benchmark"],
            item_id,
            model,
            metric_models,
            train_options,
            generate_options,
            tracking,
            retries,
        )
    return on_cluster(c.aggregate(scores=dsl.Collected(scores.outputs["scores"]), tracking=tracking))


def build_personalization(retries: int = RETRIES):
    @dsl.pipeline(name="attribute-personalization", description="One reference image, one attribute, λ sweep.")
    def attribute_personalization(
        image: str,
        attribute: str,
        class_name: str,
        prompts: list,
        model: str = MODEL,
        metric_models: str = METRIC_MODELS,
        train_options: dict = TRAIN_OPTIONS,
        generate_options: dict = GENERATE_OPTIONS,
        provenance: dict = {},  # noqa: B006 - KFP reads defaults from the signature
    ):
        with dsl.ExitHandler(finish_tracking(), name="tracked"):
            start = start_tracking("attribute-personalization", model, train_options, generate_options, provenance)
            ref = on_cluster(
                c.import_reference(image=image, attribute=attribute, class_name=class_name, prompts=prompts),
                weights=True,  # on a cluster the image is a path on the mounted volume
            )
            fan_out(
                ref,
                model,
                metric_models,
                train_options,
                generate_options,
                start.outputs["tracking"],
                parallelism=1,
                retries=retries,
            )

    return attribute_personalization


def build_benchmark(parallelism: int = 4, retries: int = RETRIES):
    @dsl.pipeline(name="attribute-benchmark", description="OSTAF over the Attribute Benchmark → paper table.")
    def attribute_benchmark(
        source: str = "dvc:/app",
        attributes: list = [],  # noqa: B006 - KFP reads defaults from the signature
        item_ids: list = [],  # noqa: B006
        per_attribute: int = 0,
        model: str = MODEL,
        metric_models: str = METRIC_MODELS,
        train_options: dict = TRAIN_OPTIONS,
        generate_options: dict = GENERATE_OPTIONS,
        provenance: dict = {},  # noqa: B006
    ):
        with dsl.ExitHandler(finish_tracking(), name="tracked"):
            start = start_tracking("attribute-benchmark", model, train_options, generate_options, provenance)
            chosen = on_cluster(
                c.select_items(source=source, attributes=attributes, item_ids=item_ids, per_attribute=per_attribute),
                object_store=True,
            )
            fan_out(
                chosen,
                model,
                metric_models,
                train_options,
                generate_options,
                start.outputs["tracking"],
                parallelism,
                retries,
            )

    return attribute_benchmark
