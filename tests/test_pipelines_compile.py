"""The compiled DAGs: tasks, edges, parameters, GPU requests, retries, the exit handler, determinism; submit up
to the client; a real failing local task."""

from dataclasses import fields

import pytest
import yaml

from components.options import package_defaults, unset_at_compiled
from ostaf.config import EvaluateConfig, GenerateConfig, TrainConfig
from ostaf.errors import OstafError
from ostaf.options import UNSET, reference_inputs, resolve_options
from pipelines.run import build_parser, compile_all, pipeline_params, submit

BRANCH = ["preprocess", "init-token", "train", "generate", "evaluate"]


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    out = tmp_path_factory.mktemp("specs")
    return {p.stem: next(yaml.safe_load_all(p.read_text())) for p in compile_all(out, parallelism=3)}


def dag_tasks(spec, component):
    return spec["components"][component]["dag"]["tasks"] if component != "root" else spec["root"]["dag"]["tasks"]


def dependencies(tasks):
    return {name: set(task.get("dependentTasks", [])) for name, task in tasks.items()}


def test_benchmark_dag_fans_out_the_five_steps(specs):
    spec = specs["attribute_benchmark"]
    body = dag_tasks(spec, "comp-exit-handler-1")
    assert set(body) == {"start-tracking", "select-items", "for-loop-2", "aggregate"}
    assert body["for-loop-2"]["iteratorPolicy"]["parallelismLimit"] == 3
    assert dependencies(body)["aggregate"] == {"for-loop-2", "start-tracking"}
    branch = dependencies(dag_tasks(spec, "comp-for-loop-2"))
    assert set(branch) == set(BRANCH)
    for before, after in zip(BRANCH, BRANCH[1:], strict=False):
        assert before in branch[after] or after == "evaluate"
    assert branch["evaluate"] == {"generate", "init-token", "train"}


@pytest.mark.parametrize("pipeline", ["attribute_benchmark", "attribute_personalization"])
def test_an_exit_handler_closes_the_parent_run_whatever_happens(specs, pipeline):
    root = dag_tasks(specs[pipeline], "root")
    assert set(root) == {"exit-handler-1", "finish-tracking"}  # every task runs inside the handler
    finish = root["finish-tracking"]
    assert finish["dependentTasks"] == ["exit-handler-1"]
    assert finish["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"  # runs after a failure too
    assert "status" in specs[pipeline]["components"]["comp-finish-tracking"]["inputDefinitions"]["parameters"]


def test_steps_that_are_safe_to_retry_are_retried_on_a_cluster_only(specs, tmp_path):
    from pipelines.dags import build_benchmark

    branch = dag_tasks(specs["attribute_benchmark"], "comp-for-loop-2")
    retried = {name for name, task in branch.items() if task.get("retryPolicy", {}).get("maxRetryCount")}
    assert retried == set(BRANCH)
    body = dag_tasks(specs["attribute_benchmark"], "comp-exit-handler-1")
    assert not any("retryPolicy" in task for task in body.values())  # select and aggregate: not per item

    from kfp import compiler

    path = tmp_path / "local.yaml"
    compiler.Compiler().compile(build_benchmark(retries=0), str(path))  # what run-local runs
    local = dag_tasks(next(yaml.safe_load_all(path.read_text())), "comp-for-loop-2")
    assert not any("retryPolicy" in task for task in local.values())


def test_parameters_come_from_the_configs(specs):
    """The options people change are typed top-level parameters, one per `opt(pipeline=True)` field, with the field's
    help as description; the rest go in `extra_options`; the compiled defaults are a sensible world job."""
    from ostaf.config import pipeline_fields
    from ostaf.options import typed_parameters
    from ostaf.recipes import DISENTANGLED, WORLD

    params = specs["attribute_benchmark"]["root"]["inputDefinitions"]["parameters"]
    typed = {name for cls in (TrainConfig, GenerateConfig, EvaluateConfig) for name in pipeline_fields(cls)}
    assert {"steps", "lr", "trainable", "lam", "seeds", "num_steps", "metric_models"} <= typed
    assert (
        set(params)
        == {
            "source",
            "attributes",
            "item_ids",
            "per_attribute",
            "model",
            "recipe",
            "extra_options",
            "provenance",
        }
        | typed
    )
    kinds = {"steps": "NUMBER_INTEGER", "lr": "NUMBER_DOUBLE", "trainable": "STRING", "lam": "LIST"}
    assert {name: params[name]["parameterType"] for name in kinds} == kinds
    for p in typed_parameters():  # described by the field's own help, defaulting to the compiled recipe's value
        assert (
            params[p.name]["description"]
            == {f.name: f for c in (TrainConfig, GenerateConfig, EvaluateConfig) for f in fields(c)}[p.name].metadata[
                "help"
            ]
        )
    assert params["steps"]["defaultValue"] == WORLD.train["steps"] and params["lr"]["defaultValue"] == WORLD.train["lr"]
    assert params["lam"]["defaultValue"] == DISENTANGLED.generate["lam"]  # the recipes every item shares
    assert params["trainable"]["defaultValue"] == DISENTANGLED.train["trainable"]  # views: the shape items' own
    # pressing "Run" in the KFP UI: make run's job, the world model on one named and one novel world reference per
    # attribute with its recipes
    assert params["model"]["defaultValue"] == "attribute-world" and params["source"]["defaultValue"] == "world"
    assert params["per_attribute"]["defaultValue"] == 2
    assert params["recipe"]["defaultValue"] == ["world", "disentangled", "views", "appearance-views", "style-views"]
    assert params["metric_models"]["defaultValue"] == EvaluateConfig.__dataclass_fields__["metric_models"].default
    single = specs["attribute_personalization"]["root"]["inputDefinitions"]["parameters"]
    assert {"image", "attribute", "class_name", "prompts", "recipe", "extra_options"} | typed <= set(single)
    # the reference's own inputs come from the configs' `reference_input` fields, with their help, all required
    own = {i.name: i for i in reference_inputs()}
    assert set(own) == {"image", "attribute", "class_name", "prompts"}
    assert all(single[n]["description"] == i.help and "defaultValue" not in single[n] for n, i in own.items())
    imports = specs["attribute_personalization"]["components"]["comp-import-reference"]["inputDefinitions"]
    assert set(imports["parameters"]) == set(own)
    # start-tracking spells the typed parameters out (KFP reads a component's source): exactly these, these types
    start = specs["attribute_benchmark"]["components"]["comp-start-tracking"]["inputDefinitions"]["parameters"]
    fixed = {"pipeline", "model", "recipe", "extra_options", "compiled_defaults", "kfp_run_id", "provenance"}
    assert set(start) - fixed == typed
    assert all(start[name]["parameterType"] == params[name]["parameterType"] for name in typed)


def test_options_resolve_config_then_recipe_then_typed_then_extra():
    from ostaf.options import typed_parameters
    from ostaf.recipes import WORLD

    defaults = {p.name: p.default for p in typed_parameters(WORLD)}  # compiled with the world recipe
    unset = dict.fromkeys(defaults, UNSET)
    at_default = resolve_options(["world"], {}, unset)
    assert at_default["train"]["steps"] == WORLD.train["steps"] and at_default["train"]["segment"] is False
    # an unset typed parameter leaves the run's recipe or the config default; a set one wins, whatever its value
    paper = resolve_options(["paper"], {}, unset)
    assert paper["train"]["steps"] == TrainConfig.__dataclass_fields__["steps"].default
    assert resolve_options(["paper"], {}, unset | {"steps": WORLD.train["steps"]})["train"]["steps"] == 200
    assert resolve_options(["paper"], {}, {})["train"] == paper["train"]  # a missing name is unset too
    changed = resolve_options(["world"], {}, unset | {"steps": 7, "lam": [0.0, 2.0], "metric_models": "tiny"})
    assert changed["train"]["steps"] == 7 and changed["generate"]["lam"] == [0.0, 2.0]
    assert changed["evaluate"] == {"metric_models": "tiny"}  # the evaluate options travel like the others
    extra = {"train": {"steps": 9, "trainable": "paper"}, "generate": {"guidance": 3.0}}
    last = resolve_options(["world"], extra, unset | {"steps": 7})
    assert last["train"]["steps"] == 9 and last["train"]["trainable"] == "paper" and last["generate"]["guidance"] == 3.0
    with pytest.raises(OstafError, match="extra_options must look like"):
        resolve_options([], {"steps": 3}, unset)
    with pytest.raises(OstafError):  # an unknown option name is refused by the config, not ignored
        resolve_options([], {"train": {"stepz": 3}}, unset)
    from ostaf import options as resolution
    from ostaf import recipes
    from ostaf.recipes import Recipe

    scored = Recipe("scored", "a recipe with an evaluate option", evaluate={"metric_models": "tiny"})
    with pytest.MonkeyPatch.context() as patch:  # a recipe's evaluate options reach the run like its others
        patch.setitem(recipes.RECIPES, "scored", scored)
        assert resolution.resolve_options(["scored"], {}, unset)["evaluate"] == {"metric_models": "tiny"}
    with pytest.raises(OstafError, match="metric_models"):  # so is a bad evaluate option
        resolve_options([], {"evaluate": {"metric_models": "big"}}, unset)
    # at the KFP boundary a value equal to the package's compiled default is how a run says "not set"
    marked = unset_at_compiled(defaults | {"steps": 7}, defaults)
    assert marked["steps"] == 7 and all(v is UNSET for k, v in marked.items() if k != "steps")


def test_train_and_generate_request_a_gpu(specs):
    executors = specs["attribute_benchmark"]["deploymentSpec"]["executors"]
    gpu = {name for name, ex in executors.items() if "accelerator" in ex["container"].get("resources", {})}
    assert gpu == {"exec-train", "exec-generate"}
    accel = executors["exec-train"]["container"]["resources"]["accelerator"]
    assert accel["resourceType"] == "nvidia.com/gpu" and accel["resourceCount"] == "1"
    assert {ex["container"]["image"] for ex in executors.values()} == {"ostaf/ostaf:0.1.0"}


def test_compile_is_deterministic(tmp_path):
    first = [p.read_bytes() for p in compile_all(tmp_path / "a")]
    second = [p.read_bytes() for p in compile_all(tmp_path / "b")]
    assert first == second


class RecordingClient:
    """Stands in for kfp.Client at the network boundary: records what would be sent."""

    calls: list = []

    def __init__(self, host, namespace):
        self.host, self.namespace = host, namespace

    def create_run_from_pipeline_package(
        self, package, arguments, run_name, experiment_name, namespace, service_account
    ):
        spec = next(yaml.safe_load_all(open(package)))
        RecordingClient.calls.append(
            dict(
                host=self.host,
                package=package,
                arguments=arguments,
                run_name=run_name,
                experiment=experiment_name,
                namespace=namespace,
                service_account=service_account,
                pipeline=spec["pipelineInfo"],
            )
        )
        return "run-123"


def test_submit_sends_the_compiled_spec_and_arguments(tmp_path):
    (package,) = [p for p in compile_all(tmp_path) if "benchmark" in p.name]
    args = build_parser().parse_args(
        [
            "submit",
            "--per-attribute",
            "2",
            "--steps",
            "800",
            "--gen-lam",
            "0",
            "1",
            "--model",
            "/models/sd-v1-4",
            "--host",
            "http://kfp.local",
        ]
    )
    params = pipeline_params(args)
    assert params["recipe"] == [] and params["extra_options"] == {}  # nothing else changed from the configs
    # the package was compiled with the world recipe: its typed defaults read as "not set", so the CLI's values for
    # them (the config defaults here) travel in extra_options, and the run gets exactly the CLI's options
    params = pipeline_params(args, package_defaults(package))
    as_compiled = build_parser().parse_args(["submit", "--steps", "200", "--host", "h"])  # the world recipe's 200
    assert pipeline_params(as_compiled, package_defaults(package))["extra_options"] == {"train": {"steps": 200}}
    assert submit(package, params, "http://kfp.local", "team-a", "ostaf", client_factory=RecordingClient) == "run-123"
    typed = {k: params[k] for k in package_defaults(package)}
    resolved = resolve_options(
        params["recipe"], params["extra_options"], unset_at_compiled(typed, package_defaults(package))
    )
    from ostaf.config import validate_options
    from ostaf.flags import options_from_args

    asked = {  # what the run resolves to is exactly what the CLI asked for, whatever the package's defaults
        "train": validate_options(TrainConfig, options_from_args(TrainConfig, args)),
        "generate": validate_options(GenerateConfig, options_from_args(GenerateConfig, args, prefix="gen-")),
        "evaluate": validate_options(EvaluateConfig, options_from_args(EvaluateConfig, args)),
    }
    assert resolved == asked and resolved["train"]["steps"] == 800
    call = RecordingClient.calls[-1]
    assert call["host"] == "http://kfp.local" and call["namespace"] == "team-a" and call["experiment"] == "ostaf"
    assert call["service_account"] == "ostaf-pipeline"  # made by infra/k8s/base/rbac.yaml
    assert call["pipeline"]["name"] == "attribute-benchmark"
    assert call["arguments"]["per_attribute"] == 2 and call["arguments"]["metric_models"] == "auto"
    assert call["arguments"]["steps"] == 800 and call["arguments"]["lam"] == [0.0, 1.0]  # typed parameters


def test_a_failed_local_task_is_one_clear_error_naming_it(tmp_path, monkeypatch, capsys):
    """A real local run whose preprocess task fails (the image is not an image): one line, the task named."""
    import pipelines.run as run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    bench = tmp_path / "bench"
    (bench / "images").mkdir(parents=True)
    (bench / "images" / "broken.png").write_bytes(b"not a png at all")
    item = {"id": "broken", "attribute": "appearance", "image": "images/broken.png", "class_name": "toy"}
    item |= {"prompts": ["a vase in the appearance of *a"], "source": "test", "license": "CC0-1.0"}
    (bench / "manifest.yaml").write_text(yaml.safe_dump({"name": "t", "version": 1, "items": [item]}))
    argv = ["run-local", "--source", str(bench), "--model", "tiny", "--no-segment", "--steps", "1"]
    assert run.main([*argv, "--pipeline-root", str(tmp_path / "kfp")]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()[-1]
    assert err.startswith("pipelines run-local: error: Pipeline 'attribute-benchmark' finished with status FAILURE")
    assert "preprocess" in err and "\x1b" not in err
    # the console: one line per task, the failed task's own last lines, no KFP internals; all of it in the log
    out = captured.out
    assert "executor_input" not in out and len(out.splitlines()) < 40
    assert "select-items       success" in out and "preprocess         failure" in out
    assert "broken.png" in out.split("preprocess         failure", 1)[1]  # the task's own error, shown
    (log,) = (tmp_path / "kfp" / "logs").glob("benchmark-*.log")
    assert str(log.relative_to(tmp_path)) in err.replace(str(tmp_path) + "/", "")
    assert "executor_input" in log.read_text()


def test_the_main_job_the_ui_default_and_the_world_shipped_method_name_the_same_recipes():
    """`make run`'s `--recipe`, the compiled pipelines' default (`COMPILED`) and the world experiment's `shipped`
    method (the rows that measure the main job) are one list: a recipe added to one and not the others would
    report numbers for a job nobody runs."""
    import re
    import shlex
    from pathlib import Path

    from ostaf.world.methods import LAYERED
    from pipelines.run import COMPILED

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    line = next(line for line in makefile.splitlines() if line.startswith("\t") and "pipelines run-local" in line)
    words = shlex.split(re.sub(r"\$\(\w+\)", "", line))
    make_recipes = words[words.index("--recipe") + 1 :]
    make_recipes = make_recipes[: next((i for i, w in enumerate(make_recipes) if w.startswith("--")), None)]
    assert make_recipes == COMPILED["recipe"]
    assert ["world", *LAYERED["shipped"]] == COMPILED["recipe"]
