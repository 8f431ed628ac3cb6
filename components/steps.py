"""One lightweight component per pipeline step. Bodies import `ostaf` and call one step function;
resources, accelerators, caching and retries are set on tasks in `pipelines/`, never here."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output, PipelineTaskFinalStatus

from components.image import IMAGE

component = dsl.component(base_image=IMAGE, install_kfp_package=False)


@component
def start_tracking(
    pipeline: str,
    model: str,
    recipe: list,
    extra_options: dict,
    compiled_defaults: dict,
    kfp_run_id: str,
    provenance: dict,
    # the typed pipeline parameters (`components.options.typed_parameters`, from `opt(pipeline=True)`): KFP reads a
    # component's signature from its source, so they are spelled out here; tests/test_pipelines_compile.py checks
    # that they are exactly those fields, with their types
    trainable: str,
    steps: int,
    lr: float,
    lam: list,
    seeds: list,
    num_steps: int,
    metric_models: str,
    tracking: Output[Artifact],
    options: Output[Artifact],
):
    """Resolve the run's options (recipe, typed parameters, extra_options) and open the parent MLflow run.

    Both travel as artifacts to the later steps, not as string outputs, on purpose: kfp 2.17's local runner
    replaces every task-output *parameter* that enters a ParallelFor with the loop item.
    """
    from components.options import resolve_options_and_open_run

    typed_values = {"trainable": trainable, "steps": steps, "lr": lr, "lam": lam, "seeds": seeds}
    typed_values |= {"num_steps": num_steps, "metric_models": metric_models}
    run_id = resolve_options_and_open_run(
        pipeline, model, recipe, extra_options, compiled_defaults, kfp_run_id, provenance, typed_values, options.path
    )
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
def select_items(
    source: str,
    attributes: list,
    item_ids: list,
    per_attribute: int,
    tracking: Input[Artifact],
    benchmark: Output[Dataset],
) -> list:
    """Pull the benchmark (`dvc:<repo>` or a folder), keep the chosen items, record it as the parent run's input."""
    from ostaf.steps import select_benchmark

    with open(tracking.path) as f:
        return select_benchmark(source, benchmark.path, attributes, item_ids, per_attribute, f.read())


@component
def import_reference(image: str, attribute: str, class_name: str, prompts: list, benchmark: Output[Dataset]) -> list:
    """A one-item benchmark from the user's own image."""
    from ostaf.steps import import_reference as run

    return run(image, attribute, class_name, prompts, benchmark.path)


@component
def preprocess(
    benchmark: Input[Dataset], item_id: str, model: str, options: Input[Artifact], reference: Output[Dataset]
):
    """SAM foreground, mask and augmentation plan of one item."""
    from components.options import read_options
    from ostaf.steps import preprocess_item

    preprocess_item(benchmark.path, item_id, model, read_options(options.path)["train"], reference.path)


@component
def init_token(reference: Input[Dataset], model: str, options: Input[Artifact], token: Output[Dataset]):
    """The reference's CLIP image features for the placeholder's initial embedding."""
    from components.options import read_options
    from ostaf.steps import init_token as run

    run(reference.path, model, read_options(options.path)["train"], token.path)


@component
def train(
    reference: Input[Dataset],
    model: str,
    options: Input[Artifact],
    tracking: Input[Artifact],
    checkpoint: Output[Model],
) -> str:
    """Fine-tune the offsets (and token) in a run nested under the pipeline's; returns its MLflow run id."""
    from components.options import read_options
    from ostaf.steps import train_item

    with open(tracking.path) as f:
        run_id = train_item(reference.path, model, read_options(options.path)["train"], f.read(), checkpoint.path)
    checkpoint.metadata["mlflow_run_id"] = run_id
    return run_id


@component
def generate(
    checkpoint: Input[Model], reference: Input[Dataset], options: Input[Artifact], run_id: str, images: Output[Dataset]
):
    """The λ sweep: prompts × seeds × λ, with one grid per prompt."""
    from components.options import read_options
    from ostaf.steps import generate_item

    generate_item(checkpoint.path, reference.path, read_options(options.path)["generate"], run_id, images.path)


@component
def evaluate(
    images: Input[Dataset],
    reference: Input[Dataset],
    model: str,
    options: Input[Artifact],
    run_id: str,
    scores: Output[Dataset],
    metrics: Output[Metrics],
):
    """CLIP-T, DINO, Gram or IoU per (prompt, λ); the largest λ's means as KFP metrics."""
    from components.options import read_options
    from ostaf.steps import evaluate_item

    evaluate_options = read_options(options.path)["evaluate"]
    for name, value in evaluate_item(images.path, reference.path, model, evaluate_options, run_id, scores.path).items():
        metrics.log_metric(name, value)


@component
def aggregate(
    scores: Input[list[Dataset]],
    tracking: Input[Artifact],
    report: Output[Dataset],
    table: Output[Markdown],
    page: Output[HTML],
):
    """The paper-style table over all items and the HTML report (table, grids, plots), logged to the parent MLflow
    run; `page` is the report for the KFP UI's visualisation pane."""
    import shutil

    from ostaf.steps import REPORT_HTML
    from ostaf.steps import aggregate as run

    with open(tracking.path) as f:
        markdown = run([s.path for s in scores], f.read(), report.path)
    with open(table.path, "w") as f:
        f.write(markdown)
    shutil.copyfile(f"{report.path}/{REPORT_HTML}", page.path)
