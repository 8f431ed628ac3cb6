"""Compile, run locally (the embedded default) and submit to a KFP endpoint.

    python -m pipelines compile --out build/pipelines
    python -m pipelines run-local --per-attribute 1 --recipe world
    python -m pipelines submit --host "$KFP_HOST" --experiment ostaf --per-attribute 1

Option flags are generated from `TrainConfig` (`--steps`, `--lr`, …), `GenerateConfig`
(`--gen-lam`, `--gen-seeds`, …) and `EvaluateConfig` (`--metric-models`); per-item fields come
from the manifest instead, or, for the personalization pipeline, from the reference's own flags (`--image`,
`--class-name`, …: the fields marked `reference_input`). `--recipe NAME …` takes named recipes' values as the
defaults (later ones win).
"""

from __future__ import annotations

import argparse
import builtins
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING
from pathlib import Path
from typing import Any

from kfp import compiler

from components.options import arguments_for, package_defaults
from ostaf.allocator import CPU_ALLOCATOR_ENV
from ostaf.config import TrainConfig, validate_options
from ostaf.data import default_source
from ostaf.errors import OstafError
from ostaf.flags import add_config_arguments, options_from_args, set_recipe_defaults
from ostaf.images import load_image
from ostaf.objects import is_object_uri, upload
from ostaf.options import SECTIONS, reference_inputs
from ostaf.recipes import RECIPES, Recipe, layered
from ostaf.steps import REPORT_HTML, reference_item
from ostaf.tracking import provenance_tags, tracking_uri
from pipelines.cluster import CLUSTER
from pipelines.console import ANSI, quiet_run
from pipelines.dags import PERSONALIZATION_PARALLELISM, build_benchmark, build_personalization

REPO = Path(__file__).resolve().parents[1]
UPLOAD_URI = "s3://ostaf-benchmark/references"  # a bucket infra/local and infra/k8s create
PIPELINES = {"benchmark": build_benchmark, "personalization": build_personalization}
LOCAL_PARALLELISM = 2  # item branches at once on this machine (kfp's local runner runs at most 2)
FLAG_PREFIX = {"train": "", "generate": "gen-", "evaluate": ""}  # per options section: `--steps`, `--gen-lam`


# what a compiled pipeline does when a user just presses "Run" in the KFP UI: `make run`'s job, the world model (it
# ships in the package) on two held-out world references per attribute with its recipes — minutes, not `tiny` for
# 3000 steps
COMPILED = {
    "recipe": ["world", "disentangled", "views", "appearance-views", "style-views"],
    "model": "attribute-world",
    "source": "world",
    "per_attribute": 2,
}


def build(name: str, parallelism: int = 4, retries: int | None = None, **settings: Any):
    """A pipeline with compile-time `settings` (recipe, model; for the benchmark also source, per_attribute)."""
    kw = {} if retries is None else {"retries": retries}
    if name == "benchmark":
        return build_benchmark(parallelism, **kw, **settings)
    return build_personalization(**kw, **{k: v for k, v in settings.items() if k in ("recipe", "model")})


def compile_all(out: str | Path, parallelism: int = 4) -> list[Path]:
    """Write both pipeline specs with the `COMPILED` defaults; the same code gives byte-identical YAML."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in PIPELINES:
        path = out / f"attribute_{name}.yaml"
        compiler.Compiler().compile(build(name, parallelism, **COMPILED), str(path))
        written.append(path)
    return written


def parent_run_url(pipeline: str, ui: str = "http://127.0.0.1:5000") -> str:
    """The MLflow UI address of the newest parent run of `pipeline` (the experiment page opens on MLflow 3's
    GenAI overview, which is empty for this project); "" when tracking cannot say."""
    from ostaf import tracking

    try:
        run_id = tracking.find_run("pipeline", pipeline)
        return f"{ui}/#/experiments/{tracking.experiment_id()}/runs/{run_id}" if run_id else ""
    except Exception:  # noqa: BLE001 - a missing link must not fail a run that succeeded
        return ""


def run_local(
    name: str, params: dict[str, Any], pipeline_root: str | Path = "runs/kfp", parallelism: int = LOCAL_PARALLELISM
) -> Path:
    """Run a pipeline on this machine with the KFP subprocess runner; MLflow goes to ./mlflow.db by default.

    No retries here (a local failure is not a lost pod). The pipeline is built with `params`' recipe as its
    compile-time one, so its typed defaults and the recipe agree. Item branches run `parallelism` at a time, the
    machine's cores shared among them (`task_threads`). Returns the aggregate task's table (Markdown).
    """
    from kfp import local

    from ostaf.tracking import tracking_uri

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri()  # absolute, so every task process shares one store
    for key, value in CPU_ALLOCATOR_ENV.items():  # task processes start with glibc tuned for tensors
        os.environ.setdefault(key, value)
    root = Path(pipeline_root).resolve()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    pipeline = build(name, parallelism, retries=0, recipe=list(params.get("recipe", [])))
    started = time.time()
    # kfp's local runner runs at most LOCAL_PARALLELISM branches at once; the personalization pipeline has one
    branches = min(parallelism, LOCAL_PARALLELISM) if name == "benchmark" else PERSONALIZATION_PARALLELISM
    with runner_globals(task_threads(branches)):
        pipeline(**params)
    return newest_output(root, "aggregate", "table", since=started)


@contextmanager
def runner_globals(threads: int) -> Iterator[None]:
    """The task processes' torch threads (`OMP_NUM_THREADS`, unless the user set it), for the run only; and what
    kfp 2.17's local runner changes process-wide kept from outliving the run or losing its lines.

    Around each task it swaps `builtins.print` (for an indenting one) and the root logger's handlers and level (for
    one on stdout at INFO), then puts back what it found: two branches at once put back each other's, so later
    prints stay indented, and a task's "finished" line can go to whatever handlers the process had (a test's
    capture, a user's file) or under the level it had (WARNING: dropped). Inside, every handler and level it can
    find are its own; after, all three are as they were.
    """
    root = logging.getLogger()
    saved_print, saved_handlers, saved_level = builtins.print, root.handlers[:], root.level
    root.handlers = [logging.StreamHandler(sys.stdout)]
    root.setLevel(logging.INFO)  # what it puts back must not drop the other branch's lines (the default: WARNING)
    user_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = user_threads or str(threads)
    try:
        yield
    finally:
        builtins.print = saved_print
        root.handlers, root.level = saved_handlers, saved_level
        if user_threads is None:
            del os.environ["OMP_NUM_THREADS"]


def task_threads(parallelism: int, cores: int | None = None) -> int:
    """Torch threads per task process when `parallelism` branches share the machine's cores: two small U-Nets
    on one core each train ~1.4× the steps of one on two cores (`benchmarks/parallel_branches.py`)."""
    return max(1, (cores or os.cpu_count() or 1) // max(1, parallelism))


def newest_output(root: Path, task: str, output: str, since: float) -> Path:
    """A task's output file under the local pipeline root, written by the run that started at `since`."""
    found = [p for p in root.glob(f"*/{task}/{output}") if p.stat().st_mtime >= since]
    if not found:
        raise OstafError(f"the local run wrote no {task}/{output} under {root}")
    return max(found, key=lambda p: p.stat().st_mtime)


def submit(
    package: str | Path,
    params: dict[str, Any],
    host: str,
    namespace: str | None,
    experiment: str,
    client_factory: Callable | None = None,
    service_account: str = CLUSTER.service_account,
):
    """Upload a compiled spec and start a run on a KFP endpoint; returns the client's run result.

    The run's pods use `service_account` (infra/k8s makes it, with read access to ostaf's settings).
    """
    import kfp

    client = (client_factory or kfp.Client)(host=host, namespace=namespace)
    run_name = f"{Path(package).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    return client.create_run_from_pipeline_package(
        str(package),
        arguments=params,
        run_name=run_name,
        experiment_name=experiment,
        namespace=namespace,
        service_account=service_account,
    )


def build_parser(recipe: Recipe | None = None) -> argparse.ArgumentParser:
    """The CLI; with a `recipe`, its option values are the defaults of run-local and submit."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    comp = sub.add_parser("compile", help="write the pipeline specs (YAML)")
    comp.add_argument("--out", default="build/pipelines")
    comp.add_argument("--parallelism", type=int, default=4, help="benchmark branches at once on a cluster")
    for name in ("run-local", "submit"):
        p = sub.add_parser(name, help=f"{name} a pipeline")
        p.add_argument("--pipeline", choices=list(PIPELINES), default="benchmark")
        p.add_argument(
            "--source",
            default="auto",
            help="benchmark folder, dvc:<repo>[@remote], or a registered source such as world (held-out Attribute "
            f"World references); auto: world for --model attribute-world, else dvc:{REPO}",
        )
        p.add_argument("--attributes", nargs="*", default=[])
        p.add_argument("--item-ids", nargs="*", default=[])
        p.add_argument("--per-attribute", type=int, default=1, help="items per attribute (0 = all)")
        p.add_argument("--all", action="store_true", help="every item of the benchmark (34)")
        add_reference_arguments(p)
        p.add_argument(
            "--recipe", nargs="+", choices=list(RECIPES), help="take named recipes' option values as defaults (layered)"
        )
        add_config_arguments(p, TrainConfig, only=("model",))
        for section, cls in SECTIONS.items():
            add_config_arguments(p, cls, prefix=FLAG_PREFIX[section], shared=True)
        if name == "submit":
            p.add_argument("--host", default=os.environ.get("KFP_HOST"), help="KFP API endpoint (or $KFP_HOST)")
            p.add_argument("--namespace", default=os.environ.get("KFP_NAMESPACE"))
            p.add_argument("--experiment", default="ostaf")
            p.add_argument("--service-account", default=CLUSTER.service_account, help="the run's pods run as")
            p.add_argument("--package", default="build/pipelines", help="folder of compiled specs")
            p.add_argument(
                "--upload-to",
                default=os.environ.get("OSTAF_UPLOAD_URI", UPLOAD_URI),
                help="personalization: where a local --image is uploaded for the cluster (an s3:// prefix; "
                "or $OSTAF_UPLOAD_URI); an s3:// or minio:// --image is passed as it is",
            )
        else:
            p.add_argument("--pipeline-root", default="runs/kfp")
            p.add_argument(
                "--parallelism",
                type=int,
                default=LOCAL_PARALLELISM,
                help="item branches at once (kfp's local runner runs at most 2), the cores shared among them",
            )
            p.add_argument("--verbose", action="store_true", help="stream every task's full output (KFP's own)")
        if recipe is not None:
            for section in SECTIONS:
                set_recipe_defaults(p, getattr(recipe, section), prefix=FLAG_PREFIX[section])
    return parser


def add_reference_arguments(parser: argparse.ArgumentParser) -> None:
    """The personalization pipeline's own inputs as flags, from the configs (`ostaf.options.reference_inputs`):
    the same names, help and defaults as its parameters; required there, so checked in `pipeline_params`."""
    for i in reference_inputs():
        kwargs: dict[str, Any] = {"dest": i.name, "help": f"personalization pipeline: {i.help}"}
        if i.annotation is list:
            kwargs |= {"nargs": "+", "default": []}
        else:
            kwargs["default"] = None if i.default is MISSING else i.default
        if i.choices:  # listed, and checked with the rest of the reference (one error naming what to do)
            kwargs["help"] += f" ({', '.join(i.choices)})"
        parser.add_argument("--" + i.name.replace("_", "-"), **kwargs)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """`--recipe NAME` is read first: its values become the defaults, and explicit flags still win."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", nargs="+", choices=list(RECIPES), default=[])
    known, _ = pre.parse_known_args(argv)
    return build_parser(layered(known.recipe)).parse_args(argv)


def pipeline_params(args: argparse.Namespace, compiled_defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pipeline arguments from the flags (for a package with these typed defaults; default: one compiled with the
    flags' recipe); the options are validated before anything runs."""
    options = {
        section: validate_options(cls, options_from_args(cls, args, prefix=FLAG_PREFIX[section]))
        for section, cls in SECTIONS.items()
    }
    common = {
        "model": args.model,
        **arguments_for(options, args.recipe, compiled_defaults),
        "provenance": provenance_tags(REPO),
    }
    if args.pipeline == "personalization":
        missing = [i.name for i in reference_inputs() if getattr(args, i.name) in (None, [])]
        if missing:
            flags = ", ".join("--" + name.replace("_", "-") for name in missing)
            raise OstafError(f"the personalization pipeline needs {flags}")
        # before the pipeline starts, as `ostaf train` does (not two minutes later inside its first task)
        reference_item(args.image, args.attribute, args.class_name, args.prompts)
        image = args.image
        if not is_object_uri(image):
            load_image(image)  # a local file: readable, an image
            if args.command == "submit":  # the cluster's pods cannot read this machine's disk: upload it
                image = upload(image, args.upload_to)
                print(f"uploaded {args.image} to {image}")
            else:
                image = str(Path(image).resolve())
        return {**common, **{i.name: getattr(args, i.name) for i in reference_inputs()}, "image": image}
    return {
        **common,
        "source": args.source if args.source != "auto" else default_source(args.model, REPO),
        "attributes": args.attributes,
        "item_ids": args.item_ids,
        "per_attribute": 0 if args.all else args.per_attribute,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "compile":
            for path in compile_all(args.out, args.parallelism):
                print(path)
            return 0
        if args.command == "submit":
            if not args.host:
                raise OstafError("no KFP endpoint: pass --host or set KFP_HOST")
            package = Path(args.package) / f"attribute_{args.pipeline}.yaml"
            if not package.is_file():
                compile_all(args.package)
            params = pipeline_params(args, package_defaults(package))  # checked (and uploaded) before it is sent
            print(submit(package, params, args.host, args.namespace, args.experiment, None, args.service_account))
            return 0
        params = pipeline_params(args)
        started = time.perf_counter()
        log = Path(args.pipeline_root) / "logs" / f"{args.pipeline}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        print(f"running the {args.pipeline} pipeline on the KFP local runner (every task's full log: {log})")
        try:
            with quiet_run(log, args.verbose):
                table = run_local(args.pipeline, params, args.pipeline_root, args.parallelism)
        except RuntimeError as err:  # kfp's local runner: a task failed; its last lines are shown above
            message = ANSI.sub("", str(err))
            print(f"pipelines run-local: error: {message} (its full log: {log})", file=sys.stderr)
            return 1
        print(f"local {args.pipeline} run finished in {time.perf_counter() - started:.0f} s\n")
        print(table.read_text())
        page = table.with_name("report") / REPORT_HTML  # the aggregate's report folder (its Output[HTML] is a copy)
        if page.exists():
            shown = page.relative_to(Path.cwd()) if page.is_relative_to(Path.cwd()) else page
            print(f"report (open in a browser): {shown}")
        print(
            f"MLflow: .venv/bin/mlflow ui --backend-store-uri {tracking_uri()}  (the same report: the parent run's "
            "report/report.html)"
        )
        run = parent_run_url(f"attribute-{args.pipeline}")
        if run:
            print(f"this run in MLflow (with the UI above running): {run}")
        return 0
    except OstafError as err:
        print(f"pipelines {args.command}: error: {err}", file=sys.stderr)
        return 2
