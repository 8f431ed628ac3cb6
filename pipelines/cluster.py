"""What the compiled pipeline asks of a Kubernetes cluster, by name; `infra/k8s` provides each.

One source of truth: the pipeline's platform spec is written from `ClusterSettings`, and
`tests/test_k8s.py` checks that the rendered manifests define every object named here.
The local runner ignores all of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from kfp import dsl, kubernetes

# keys of the `config_map` every step reads as environment variables
CONFIG_KEYS = ("MLFLOW_TRACKING_URI", "AWS_DEFAULT_REGION", "HF_HOME", "HF_HUB_OFFLINE")
# keys of the optional `endpoint_map` (present when the object store is in the cluster, e.g. MinIO)
ENDPOINT_KEYS = ("AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL")
# keys of the `s3_secret`: only steps that read the object store themselves get them (DVC pulls);
# MLflow artifacts go through the tracking server's proxy, which holds its own credentials
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@dataclass(frozen=True)
class ClusterSettings:
    """Names of the cluster objects ostaf's steps use, and where GPU steps may run."""

    config_map: str = "ostaf-config"
    endpoint_map: str = "ostaf-s3-endpoint"
    s3_secret: str = "ostaf-s3"
    service_account: str = "ostaf-pipeline"
    weights_pvc: str = "ostaf-weights"
    weights_path: str = "/weights"
    gpu_resource: str = "nvidia.com/gpu"
    gpu_node_label: tuple[str, str] = ("nvidia.com/gpu.present", "true")
    gpu_taint: str = "nvidia.com/gpu"  # tolerated (NoSchedule) by GPU steps


CLUSTER = ClusterSettings()


def on_cluster(
    task: dsl.PipelineTask,
    settings: ClusterSettings = CLUSTER,
    *,
    gpu: bool = False,
    weights: bool = False,
    object_store: bool = False,
) -> dsl.PipelineTask:
    """Give one task its settings, and as asked the weights volume, the S3 secret, one GPU."""
    kubernetes.use_config_map_as_env(task, settings.config_map, {k: k for k in CONFIG_KEYS})
    kubernetes.use_config_map_as_env(task, settings.endpoint_map, {k: k for k in ENDPOINT_KEYS}, optional=True)
    if object_store:
        kubernetes.use_secret_as_env(task, settings.s3_secret, {k: k for k in S3_KEYS})
    if weights:
        kubernetes.mount_pvc(task, settings.weights_pvc, settings.weights_path)
    if gpu:
        task.set_accelerator_type(settings.gpu_resource).set_accelerator_limit(1)
        kubernetes.add_node_selector(task, *settings.gpu_node_label)
        kubernetes.add_toleration(task, key=settings.gpu_taint, operator="Exists", effect="NoSchedule")
    return task
