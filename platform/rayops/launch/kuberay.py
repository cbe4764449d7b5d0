"""KubeRay manifests for a pipeline: a RayCluster, a RayJob that ingests and trains on its
own cluster, and a RayService that serves the champion (``rayops k8s CONFIG``).

The worker groups mirror ``cluster.yaml``'s node types (name, CPUs, GPUs, min and max), so
AWS and Kubernetes run the same shape; every pod runs rayops' image (``make image``); the
pipeline config travels in a ConfigMap, the Serve config inline in ``serveConfigV2``.
Ray's token authentication is on (``authOptions``); the RayService's GCS keeps its state
in Redis (``gcsFaultToleranceOptions``), so a restarted head pod finds its applications.
"""

from __future__ import annotations

import copy
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from rayops.config import PipelineConfig
from rayops.errors import ConfigError
from rayops.launch.cluster import read_shape

RAY_VERSION = "2.60.0"  # the version pyproject.toml pins (a test checks it)
API_VERSION = "ray.io/v1"
CONFIG_MOUNT = "/home/ray/pipeline"


def _group_name(node_type: str) -> str:
    return node_type.replace("_", "-")


def node_groups(cluster_yaml: Path) -> list[dict[str, Any]]:
    """The worker node types of ``cluster.yaml``: name, CPUs, GPUs, min and max workers."""
    return [
        {"name": t.name, "cpus": t.cpus, "gpus": t.gpus, "min": t.min_workers, "max": t.max_workers}
        for t in read_shape(cluster_yaml).workers
    ]


# A pod cannot ask for a whole node: the kubelet and system daemons keep some of it.
MEMORY_GI_PER_CPU = 3


def _container(
    name: str, image: str, cpus: int, gpus: int, ports: list[tuple[str, int]]
) -> dict[str, Any]:
    usable = max(1, cpus - 1)  # of the node type's CPUs, one left to the node itself
    limits: dict[str, Any] = {"cpu": str(usable), "memory": f"{usable * MEMORY_GI_PER_CPU}Gi"}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "resources": {"requests": dict(limits), "limits": limits},
        "volumeMounts": [{"name": "pipeline", "mountPath": CONFIG_MOUNT}],
    }
    if ports:
        container["ports"] = [{"name": n, "containerPort": p} for n, p in ports]
    return container


def _pod(container: dict[str, Any], config_map: str) -> dict[str, Any]:
    return {
        "spec": {
            "containers": [container],
            "volumes": [{"name": "pipeline", "configMap": {"name": config_map}}],
        }
    }


def cluster_spec(image: str, groups: list[dict[str, Any]], config_map: str) -> dict[str, Any]:
    """A RayCluster spec: an autoscaling head and one worker group per node type."""
    head = _container(
        "ray-head", f"{image}-cpu", 4, 0, [("gcs", 6379), ("dashboard", 8265), ("serve", 8000)]
    )
    workers = []
    for group in groups:
        flavour = "gpu" if group["gpus"] else "cpu"
        workers.append(
            {
                "groupName": _group_name(group["name"]),
                "replicas": group["min"],
                "minReplicas": group["min"],
                "maxReplicas": group["max"],
                "rayStartParams": {},
                "template": _pod(
                    _container(
                        "ray-worker", f"{image}-{flavour}", group["cpus"], group["gpus"], []
                    ),
                    config_map,
                ),
            }
        )
    return {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": True,
        "authOptions": {"mode": "token"},
        # Inside the pod: KubeRay reaches the dashboard through its ClusterIP service, which
        # is not exposed outside the Kubernetes cluster; token authentication guards it.
        "headGroupSpec": {
            "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
            "template": _pod(head, config_map),
        },
        "workerGroupSpecs": workers,
    }


def _check_portable(cfg: PipelineConfig) -> None:
    """Pods share no disk with this machine: the lake and MLflow must be services."""
    if not cfg.storage.root.startswith("s3://"):
        raise ConfigError(
            f"storage.root {cfg.storage.root!r} is a local folder: pods on "
            "Kubernetes need an object store (s3://bucket/prefix)"
        )
    if not cfg.tracking.uri.startswith(("http://", "https://")):
        raise ConfigError(
            f"tracking.uri {cfg.tracking.uri!r} is not an MLflow server: pods "
            "on Kubernetes need one (http://mlflow.<namespace>:5000)"
        )
    for key, uri in (
        ("tracking.uri", cfg.tracking.uri),
        ("storage.endpoint_url", cfg.storage.endpoint_url),
    ):
        host = urllib.parse.urlsplit(uri or "").hostname or ""
        if host in ("127.0.0.1", "localhost", "::1") or host.startswith("127."):
            raise ConfigError(
                f"{key} is {uri!r} (after ${{...}} references were resolved here): inside a "
                "pod that address is the pod itself. Give the cluster's address, e.g. "
                f"--set {key}=http://mlflow.<namespace>:5000"
                if key == "tracking.uri"
                else f"{key} is {uri!r}: inside a pod that address is the pod itself; give the "
                f"object store's address in the cluster, e.g. --set {key}=http://minio:9000"
            )
    if cfg.serve.auth_token_env is None and cfg.serve.auth_token_file is None:
        raise ConfigError(
            "serve: on Kubernetes Serve listens on the pod's address (KubeRay's Service "
            "routes to it), so requests must carry a bearer token: set serve.auth_token_env "
            f"(the RayService reads it from the Secret {cfg.name}-serve-token), e.g. --set "
            "serve.auth_token_env=RAYOPS_SERVE_TOKEN"
        )


def _with_serve_token(spec: dict[str, Any], cfg: PipelineConfig) -> None:
    """Every container gets the bearer token from the Secret ``{name}-serve-token``."""
    env_name = cfg.serve.auth_token_env
    if env_name is None:
        return
    templates = [
        spec["headGroupSpec"]["template"],
        *(g["template"] for g in spec["workerGroupSpecs"]),
    ]
    for template in templates:
        for container in template["spec"]["containers"]:
            container.setdefault("env", []).append(
                {
                    "name": env_name,
                    "valueFrom": {
                        "secretKeyRef": {"name": f"{cfg.name}-serve-token", "key": "token"}
                    },
                }
            )


def manifests(
    cfg: PipelineConfig,
    image: str,
    cluster_yaml: Path,
    redis_address: str = "redis:6379",
    redis_secret: str = "rayops-redis",
) -> list[dict[str, Any]]:
    """ConfigMap, RayCluster, RayJob and RayService for ``cfg``; ``image`` without the
    ``-cpu``/``-gpu`` suffix (e.g. ``registry/rayops:0.1.0``)."""
    from rayops.serve import inline_config, serve_config

    _check_portable(cfg)
    # Serve's proxy listens on the pod's address (KubeRay's serve Service routes to it), so
    # the config must ask for a bearer token: the config refuses to load otherwise.
    serving = cfg.with_overrides({"serve.host": "0.0.0.0"})
    name = cfg.name
    config_map = f"{name}-pipeline"
    groups = node_groups(cluster_yaml)
    spec = cluster_spec(image, groups, config_map)
    service_spec = copy.deepcopy(spec)
    _with_serve_token(service_spec, serving)
    service_spec["gcsFaultToleranceOptions"] = {
        "redisAddress": redis_address,
        "redisPassword": {"valueFrom": {"secretKeyRef": {"name": redis_secret, "key": "password"}}},
        "externalStorageNamespace": name,
    }
    pipeline_yaml = yaml.safe_dump(inline_config(cfg), sort_keys=False)
    config = f"{CONFIG_MOUNT}/pipeline.yaml"
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": config_map},
            "data": {"pipeline.yaml": pipeline_yaml},
        },
        {
            "apiVersion": API_VERSION,
            "kind": "RayCluster",
            "metadata": {"name": name},
            "spec": copy.deepcopy(spec),
        },
        {
            "apiVersion": API_VERSION,
            "kind": "RayJob",
            "metadata": {"name": f"{name}-pipeline"},
            # Ingest, then train and gate; serving is the RayService's, which follows the
            # champion alias, so this cluster can go away when the job ends.
            "spec": {
                "entrypoint": f"python -m rayops ingest {config} && "
                f"python -m rayops train {config}",
                "shutdownAfterJobFinishes": True,
                "ttlSecondsAfterFinished": 3600,
                "rayClusterSpec": copy.deepcopy(spec),
            },
        },
        {
            "apiVersion": API_VERSION,
            "kind": "RayService",
            "metadata": {"name": f"{name}-serve"},
            "spec": {
                "serveConfigV2": yaml.safe_dump(serve_config(serving), sort_keys=False),
                "rayClusterConfig": service_spec,
            },
        },
    ]
