"""``cluster.yaml``'s shape, read once for every place rayops runs it: KubeRay's worker
groups (``k8s.py``) and a simulated cluster on one machine (Ray's fake multi-node
provider), so a local autoscaling run has the AWS cluster's node types, resources and
limits.

The simulated cluster is the real autoscaler (``ray start --head --autoscaling-config``)
launching and removing real raylets on this machine, each advertising its node type's
resources (GPUs included: logical only, nothing there has CUDA). Ray's fake provider names
the head ``ray.head.default``; the worker types keep cluster.yaml's names.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rayops.errors import ConfigError

SIMULATED_HEAD = "ray.head.default"  # the fake provider's fixed name for the head node
SIMULATED_OBJECT_STORE_BYTES = 300 * 1024**2  # per simulated node; they share one /dev/shm


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict[str, float]
    min_workers: int
    max_workers: int

    @property
    def cpus(self) -> int:
        return int(self.resources.get("CPU", 1))

    @property
    def gpus(self) -> int:
        return int(self.resources.get("GPU", 0))


@dataclass(frozen=True)
class ClusterShape:
    head: NodeType
    workers: list[NodeType]
    max_workers: int
    upscaling_speed: float
    idle_timeout_minutes: float


def read_shape(cluster_yaml: Path) -> ClusterShape:
    """The head and worker node types of a Ray cluster launcher config."""
    try:
        cluster = yaml.safe_load(cluster_yaml.read_text())
        types = cluster["available_node_types"]
        head_name = cluster["head_node_type"]
        nodes = {
            name: NodeType(
                name,
                {k: float(v) for k, v in t["resources"].items()},
                int(t.get("min_workers", 0)),
                int(t.get("max_workers", 0)),
            )
            for name, t in types.items()
        }
        head = nodes.pop(head_name)
    except (OSError, KeyError, TypeError, ValueError, AttributeError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"cannot read node types from {cluster_yaml}: {type(exc).__name__}: {exc}"
        ) from None
    return ClusterShape(
        head=head,
        workers=list(nodes.values()),
        max_workers=int(cluster.get("max_workers", 2)),
        upscaling_speed=float(cluster.get("upscaling_speed", 1.0)),
        idle_timeout_minutes=float(cluster.get("idle_timeout_minutes", 5)),
    )


def simulated_config(
    shape: ClusterShape,
    gcs_port: int,
    idle_timeout_minutes: float | None = None,
    object_store_bytes: int = SIMULATED_OBJECT_STORE_BYTES,
) -> dict[str, Any]:
    """An autoscaling config for Ray's fake multi-node provider with ``shape``'s node types,
    its workers joining the head's GCS at ``127.0.0.1:gcs_port``."""

    def node(t: NodeType) -> dict[str, Any]:
        return {
            "resources": {**t.resources, "object_store_memory": object_store_bytes},
            "node_config": {},
            "min_workers": t.min_workers,
            "max_workers": t.max_workers,
        }

    return {
        "cluster_name": "rayops-simulated",
        "max_workers": shape.max_workers,
        "upscaling_speed": shape.upscaling_speed,
        "idle_timeout_minutes": (
            shape.idle_timeout_minutes if idle_timeout_minutes is None else idle_timeout_minutes
        ),
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"127.0.0.1:{gcs_port}",
        },
        "available_node_types": {
            SIMULATED_HEAD: {
                "resources": dict(shape.head.resources),
                "node_config": {},
                "max_workers": 0,
            },
            **{t.name: node(t) for t in shape.workers},
        },
        "head_node_type": SIMULATED_HEAD,
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


# The fake provider starts workers in the autoscaler's process environment: token auth and
# the loopback address (Ray's "no multi-node" switch makes every node use 127.0.0.1).
SIMULATED_ENV = {
    "RAY_FAKE_CLUSTER": "1",
    "RAY_AUTH_MODE": "token",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


def simulated_start_command(
    shape: ClusterShape, config_file: Path, gcs_port: int, dashboard_port: int = 8265
) -> list[str]:
    """``ray start --head`` for the simulated cluster (run with ``SIMULATED_ENV``)."""
    return [
        "ray",
        "start",
        "--head",
        "--port",
        str(gcs_port),
        "--node-ip-address",
        "127.0.0.1",
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dashboard_port),
        "--autoscaling-config",
        str(config_file),
        "--num-cpus",
        str(shape.head.cpus),
        "--num-gpus",
        str(shape.head.gpus),
        "--object-store-memory",
        str(SIMULATED_OBJECT_STORE_BYTES),
    ]


def shell_line(command: list[str], env: dict[str, str]) -> str:
    return " ".join([*(f"{k}={v}" for k, v in env.items()), *map(shlex.quote, command)])
