"""infra/k8s: every overlay renders with kustomize, validates against the Kubernetes schemas offline,
and defines each object the compiled pipeline's platform spec names (secrets, config maps, volume,
service account). What cannot be checked here: applying to a real cluster."""

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from components.image import DEFAULT_IMAGE
from pipelines.cluster import CLUSTER, CONFIG_KEYS, ENDPOINT_KEYS, S3_KEYS
from pipelines.run import compile_all

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "infra" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir())
KUBERNETES_VERSION = "1.32.0"  # the oldest Kubernetes release the manifests are meant for


def render(overlay: str, tmp: Path) -> list[dict]:
    """`kubectl kustomize` of a copy of infra/k8s whose secret templates are filled with examples."""
    tree = tmp / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("*.env"))
    for example in (tree / "base" / "secrets").glob("*.env.example"):
        shutil.copy(example, example.with_suffix(""))
    done = subprocess.run(
        ["kubectl", "kustomize", str(tree / "overlays" / overlay)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request, tmp_path_factory):
    return request.param, render(request.param, tmp_path_factory.mktemp(request.param))


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def containers(objects: list[dict]):
    for o in objects:
        spec = o.get("spec", {})
        pod = spec.get("template", {}).get("spec", {})
        if o["kind"] == "Job":
            pod = spec["template"]["spec"]
        yield from ((o, c) for c in pod.get("containers", []))


def test_overlays_exist():
    assert {"dev", "production"} <= set(OVERLAYS)


def test_every_object_validates_against_the_kubernetes_schemas(rendered):
    _, objects = rendered
    assert len(objects) >= 10
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)  # raises on any schema error


def test_validation_rejects_a_broken_object(rendered):
    """The validator is not a no-op: a misspelt field and a wrong type are both caught."""
    _, objects = rendered
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    misspelt = yaml.safe_load(yaml.safe_dump(deployment))
    misspelt["spec"]["replica"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)
    wrong_type = yaml.safe_load(yaml.safe_dump(deployment))
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, KUBERNETES_VERSION, strict=True)


def test_the_objects_the_pipeline_names_exist_with_the_keys_it_reads(rendered):
    overlay, objects = rendered
    namespaces = {o["metadata"].get("namespace") for o in objects}
    assert namespaces == {"kubeflow"}, "every object in the namespace the pipeline pods run in"
    config_maps, secrets = by_kind(objects, "ConfigMap"), by_kind(objects, "Secret")
    assert set(CONFIG_KEYS) <= set(config_maps[CLUSTER.config_map]["data"])
    assert set(S3_KEYS) <= set(secrets[CLUSTER.s3_secret]["data"])
    assert CLUSTER.weights_pvc in by_kind(objects, "PersistentVolumeClaim")
    assert CLUSTER.service_account in by_kind(objects, "ServiceAccount")
    role = by_kind(objects, "Role")[CLUSTER.service_account]
    readable = {name for rule in role["rules"] for name in rule["resourceNames"]}
    assert {CLUSTER.s3_secret, CLUSTER.config_map} <= readable
    binding = by_kind(objects, "RoleBinding")[CLUSTER.service_account]
    assert binding["subjects"][0]["name"] == CLUSTER.service_account
    if overlay == "dev":  # MinIO in the cluster: the optional endpoint map points at it
        endpoint = config_maps[CLUSTER.endpoint_map]["data"]
        assert set(ENDPOINT_KEYS) == set(endpoint) and endpoint["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
        assert "minio" in by_kind(objects, "Service") and "minio-buckets" in by_kind(objects, "Job")
    else:  # the provider's S3: no endpoint map, no MinIO
        assert CLUSTER.endpoint_map not in config_maps and "minio" not in by_kind(objects, "Deployment")


def test_mlflow_runs_on_postgres_with_proxied_s3_artifacts_and_no_jobs(rendered):
    _, objects = rendered
    mlflow = by_kind(objects, "Deployment")["mlflow"]["spec"]["template"]["spec"]["containers"][0]
    args = " ".join(mlflow["args"])
    assert "--backend-store-uri=postgresql://" in args and "@postgres:5432/" in args
    assert "--serve-artifacts" in args and "--artifacts-destination=$(MLFLOW_ARTIFACTS_DESTINATION)" in args
    assert {"name": "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "value": "false"} in mlflow["env"]
    refs = {e.get("secretRef", {}).get("name") for e in mlflow["envFrom"]}
    assert {CLUSTER.s3_secret, "ostaf-postgres"} <= refs
    assert mlflow["image"] == DEFAULT_IMAGE  # the pipeline's image, named once in components/image.py
    postgres = by_kind(objects, "StatefulSet")["postgres"]
    assert postgres["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]


def test_no_secret_value_is_committed(rendered):
    """Secrets come from git-ignored .env files; the committed examples hold placeholders only."""
    filled = [str(example.with_suffix("")) for example in (K8S / "base" / "secrets").glob("*.env.example")]
    assert len(filled) == 2
    ignored = subprocess.run(["git", "check-ignore", *filled], cwd=REPO, capture_output=True, text=True).stdout
    assert sorted(ignored.split()) == sorted(filled)
    for example in (K8S / "base" / "secrets").glob("*.env.example"):
        for line in example.read_text().splitlines():
            if "PASSWORD" in line or "SECRET" in line:
                assert line.endswith("=REPLACE_ME"), line


def test_every_container_runs_as_non_root_with_memory_limits(rendered):
    _, objects = rendered
    for obj, container in containers(objects):
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, obj["metadata"]["name"]
        assert container["resources"]["limits"]["memory"], obj["metadata"]["name"]


def test_compiled_pipeline_platform_spec_uses_what_the_manifests_provide(tmp_path):
    (package,) = [p for p in compile_all(tmp_path) if "benchmark" in p.name]
    _, platform = yaml.safe_load_all(package.read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    objects = render("dev", tmp_path)
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    gpu_steps = set()
    for name, executor in executors.items():
        for ref in executor.get("configMapAsEnv", []):
            assert ("ConfigMap", ref["configMapName"]) in names
        for ref in executor.get("secretAsEnv", []):
            assert ("Secret", ref["secretName"]) in names
            assert {k["secretKey"] for k in ref["keyToEnv"]} == set(S3_KEYS)
        for mount in executor.get("pvcMount", []):
            assert ("PersistentVolumeClaim", mount["constant"]) in names
            assert mount["mountPath"] == CLUSTER.weights_path
        if "nodeSelector" in executor:
            gpu_steps.add(name)
            assert executor["nodeSelector"]["labels"] == dict([CLUSTER.gpu_node_label])
            assert executor["tolerations"][0]["key"] == CLUSTER.gpu_taint
    assert gpu_steps == {"exec-train", "exec-generate"}
    assert {n for n, e in executors.items() if "secretAsEnv" in e} == {"exec-select-items"}
    assert {n for n, e in executors.items() if "pvcMount" in e} == {
        "exec-preprocess",
        "exec-init-token",
        "exec-train",
        "exec-generate",
        "exec-evaluate",
    }
