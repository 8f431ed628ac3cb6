"""The two pipelines, built by factories so that compile-time settings stay arguments.

attribute_personalization: one reference image + attribute → preprocess, init-token,
                           train, generate (λ sweep), evaluate (+ the one-row table)
attribute_benchmark:       the same branch fanned out over the manifest → aggregate
"""

from kfp import dsl
from kfp.dsl import Markdown

from components import steps as c
from ostaf.config import GenerateConfig, TrainConfig
from ostaf.steps import default_options
from pipelines.cluster import on_cluster

TRAIN_OPTIONS = default_options(TrainConfig)
GENERATE_OPTIONS = default_options(GenerateConfig)


def item_branch(benchmark, item_id, model, metric_models, train_options, generate_options, tracking):
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
    return on_cluster(
        c.evaluate(
            images=images.outputs["images"],
            reference=token.outputs["token"],
            metric_models=metric_models,
            run_id=trained.outputs["Output"],
        ),
        weights=True,
    )


def start_tracking(pipeline: str, model, train_options, generate_options) -> dsl.PipelineTask:
    """The task that opens the pipeline's parent MLflow run, tagged with the KFP run id."""
    return on_cluster(
        c.start_tracking(
            pipeline=pipeline,
            model=model,
            train_options=train_options,
            generate_options=generate_options,
            kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
    )


def fan_out(
    chosen: dsl.PipelineTask, model, metric_models, train_options, generate_options, tracking, parallelism: int
) -> dsl.PipelineTask:
    """One branch per item id that `chosen` returned, then the aggregate table over all of them."""
    with dsl.ParallelFor(chosen.outputs["Output"], parallelism=parallelism) as item_id:
        scores = item_branch(
            chosen.outputs["benchmark"], item_id, model, metric_models, train_options, generate_options, tracking
        )
    table = on_cluster(c.aggregate(scores=dsl.Collected(scores.outputs["scores"]), tracking=tracking))
    return table.outputs["table"]


def build_personalization():
    @dsl.pipeline(name="attribute-personalization", description="One reference image, one attribute, λ sweep.")
    def attribute_personalization(
        image: str,
        attribute: str,
        class_name: str,
        prompts: list,
        model: str = "tiny",
        metric_models: str = "auto",
        train_options: dict = TRAIN_OPTIONS,
        generate_options: dict = GENERATE_OPTIONS,
    ) -> Markdown:
        start = start_tracking("attribute-personalization", model, train_options, generate_options)
        ref = on_cluster(
            c.import_reference(image=image, attribute=attribute, class_name=class_name, prompts=prompts),
            weights=True,  # on a cluster the image is a path on the mounted volume
        )
        return fan_out(
            ref, model, metric_models, train_options, generate_options, start.outputs["tracking"], parallelism=1
        )

    return attribute_personalization


def build_benchmark(parallelism: int = 4):
    @dsl.pipeline(name="attribute-benchmark", description="OSTAF over the Attribute Benchmark → paper table.")
    def attribute_benchmark(
        source: str = "dvc:/app",
        attributes: list = [],  # noqa: B006 - KFP reads defaults from the signature
        item_ids: list = [],  # noqa: B006
        per_attribute: int = 0,
        model: str = "tiny",
        metric_models: str = "auto",
        train_options: dict = TRAIN_OPTIONS,
        generate_options: dict = GENERATE_OPTIONS,
    ) -> Markdown:
        start = start_tracking("attribute-benchmark", model, train_options, generate_options)
        chosen = on_cluster(
            c.select_items(source=source, attributes=attributes, item_ids=item_ids, per_attribute=per_attribute),
            object_store=True,
        )
        return fan_out(
            chosen, model, metric_models, train_options, generate_options, start.outputs["tracking"], parallelism
        )

    return attribute_benchmark
