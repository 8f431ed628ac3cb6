"""One lightweight component per pipeline step. Bodies import `ostaf` and call one step function;
resources, accelerators, caching and retries are set on tasks in `pipelines/`, never here."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output, PipelineTaskFinalStatus

from components.image import IMAGE

component = dsl.component(base_image=IMAGE, install_kfp_package=False)


@component
def start_tracking(
    pipeline: str,
    model: str,
    train_options: dict,
    generate_options: dict,
    kfp_run_id: str,
    provenance: dict,
    tracking: Output[Artifact],
):
    """Open the parent MLflow run; its id travels as an artifact to every later step.

    An artifact, not a string output, on purpose: kfp 2.17's local runner replaces every
    task-output *parameter* that enters a ParallelFor with the loop item.
    """
    from components.options import typed
    from ostaf.config import GenerateConfig, TrainConfig
    from ostaf.steps import start_pipeline_run

    train, gen = typed(TrainConfig, train_options), typed(GenerateConfig, generate_options)
    run_id = start_pipeline_run(pipeline, model, train, gen, kfp_run_id, provenance)
    with open(tracking.path, "w") as f:
        f.write(run_id)
    tracking.metadata["mlflow_run_id"] = run_id


@component
def finish_tracking(kfp_run_id: str, status: PipelineTaskFinalStatus) -> str:
    """The exit handler: close the parent MLflow run with the pipeline's final state, whatever happened.

    KFP lets an exit task depend on no other task, so it finds the parent run by its `kfp_run_id` tag.
    """
    from ostaf.steps import finish_pipeline_run

    return finish_pipeline_run(kfp_run_id, status.state)


@component
def select_items(source: str, attributes: list, item_ids: list, per_attribute: int, benchmark: Output[Dataset]) -> list:
    """Pull the benchmark (`dvc:<repo>` or a folder) and keep the chosen items."""
    from ostaf.steps import select_benchmark

    return select_benchmark(source, benchmark.path, attributes, item_ids, per_attribute)


@component
def import_reference(image: str, attribute: str, class_name: str, prompts: list, benchmark: Output[Dataset]) -> list:
    """A one-item benchmark from the user's own image."""
    from ostaf.steps import import_reference as run

    return run(image, attribute, class_name, prompts, benchmark.path)


@component
def preprocess(benchmark: Input[Dataset], item_id: str, model: str, train_options: dict, reference: Output[Dataset]):
    """SAM foreground, mask and augmentation plan of one item."""
    from components.options import typed
    from ostaf.config import TrainConfig
    from ostaf.steps import preprocess_item

    preprocess_item(benchmark.path, item_id, model, typed(TrainConfig, train_options), reference.path)


@component
def init_token(reference: Input[Dataset], model: str, train_options: dict, token: Output[Dataset]):
    """The reference's CLIP image features for the placeholder's initial embedding."""
    from components.options import typed
    from ostaf.config import TrainConfig
    from ostaf.steps import init_token as run

    run(reference.path, model, typed(TrainConfig, train_options), token.path)


@component
def train(
    reference: Input[Dataset], model: str, train_options: dict, tracking: Input[Artifact], checkpoint: Output[Model]
) -> str:
    """Fine-tune the offsets (and token) in a run nested under the pipeline's; returns its MLflow run id."""
    from components.options import typed
    from ostaf.config import TrainConfig
    from ostaf.steps import train_item

    with open(tracking.path) as f:
        run_id = train_item(reference.path, model, typed(TrainConfig, train_options), f.read(), checkpoint.path)
    checkpoint.metadata["mlflow_run_id"] = run_id
    return run_id


@component
def generate(
    checkpoint: Input[Model], reference: Input[Dataset], generate_options: dict, run_id: str, images: Output[Dataset]
):
    """The λ sweep: prompts × seeds × λ, with one grid per prompt."""
    from components.options import typed
    from ostaf.config import GenerateConfig
    from ostaf.steps import generate_item

    generate_item(checkpoint.path, reference.path, typed(GenerateConfig, generate_options), run_id, images.path)


@component
def evaluate(
    images: Input[Dataset],
    reference: Input[Dataset],
    model: str,
    metric_models: str,
    run_id: str,
    scores: Output[Dataset],
    metrics: Output[Metrics],
):
    """CLIP-T, DINO, Gram or IoU per (prompt, λ); the largest λ's means as KFP metrics."""
    from ostaf.steps import evaluate_item

    options = {"metric_models": metric_models}
    for name, value in evaluate_item(images.path, reference.path, model, options, run_id, scores.path).items():
        metrics.log_metric(name, value)


@component
def aggregate(
    scores: Input[list[Dataset]], tracking: Input[Artifact], report: Output[Dataset], table: Output[Markdown]
):
    """The paper-style table over all items, logged to the parent MLflow run."""
    from ostaf.steps import aggregate as run

    with open(tracking.path) as f:
        markdown = run([s.path for s in scores], f.read(), report.path)
    with open(table.path, "w") as f:
        f.write(markdown)
