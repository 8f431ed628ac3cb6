"""The compiled DAGs: tasks, edges, parameters, GPU requests, determinism; submit up to the client."""

from dataclasses import fields

import pytest
import yaml

from ostaf.config import GenerateConfig, TrainConfig
from ostaf.steps import PER_ITEM_GENERATE, PER_ITEM_TRAIN
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
    root = dag_tasks(spec, "root")
    assert set(root) == {"start-tracking", "select-items", "for-loop-1", "aggregate"}
    assert root["for-loop-1"]["iteratorPolicy"]["parallelismLimit"] == 3
    assert dependencies(root)["aggregate"] == {"for-loop-1", "start-tracking"}
    branch = dependencies(dag_tasks(spec, "comp-for-loop-1"))
    assert set(branch) == set(BRANCH)
    for before, after in zip(BRANCH, BRANCH[1:], strict=False):
        assert before in branch[after] or after == "evaluate"
    assert branch["evaluate"] == {"generate", "init-token", "train"}


def test_parameters_come_from_the_configs(specs):
    params = specs["attribute_benchmark"]["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {
        "source",
        "attributes",
        "item_ids",
        "per_attribute",
        "model",
        "metric_models",
        "train_options",
        "generate_options",
    }
    train = params["train_options"]["defaultValue"]
    assert set(train) == {f.name for f in fields(TrainConfig)} - set(PER_ITEM_TRAIN)
    assert train["lr"] == 1e-6 and train["steps"] == 3000 and train["grad_accum"] == 2
    assert set(params["generate_options"]["defaultValue"]) == {f.name for f in fields(GenerateConfig)} - set(
        PER_ITEM_GENERATE
    )
    single = specs["attribute_personalization"]["root"]["inputDefinitions"]["parameters"]
    assert {"image", "attribute", "class_name", "prompts"} <= set(single)


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
    assert submit(package, params, "http://kfp.local", "team-a", "ostaf", client_factory=RecordingClient) == "run-123"
    call = RecordingClient.calls[-1]
    assert call["host"] == "http://kfp.local" and call["namespace"] == "team-a" and call["experiment"] == "ostaf"
    assert call["service_account"] == "ostaf-pipeline"  # made by infra/k8s/base/rbac.yaml
    assert call["pipeline"]["name"] == "attribute-benchmark"
    assert call["arguments"]["per_attribute"] == 2 and call["arguments"]["metric_models"] == "auto"
    assert call["arguments"]["train_options"]["steps"] == 800
    assert call["arguments"]["generate_options"]["lam"] == [0.0, 1.0]


def test_a_failed_local_run_is_one_clear_error(monkeypatch, capsys):
    import pipelines.run as run

    def failing(*args, **kwargs):
        raise RuntimeError("Pipeline \x1b[95m'attribute-benchmark'\x1b[0m finished with status FAILURE.")

    monkeypatch.setattr(run, "run_local", failing)
    assert run.main(["run-local", "--model", "tiny", "--steps", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pipelines run-local: error: Pipeline 'attribute-benchmark' finished with status FAILURE.")
    assert "\x1b" not in err
