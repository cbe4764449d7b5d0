"""`rayops k8s`: KubeRay manifests checked against a strict schema of every field they use
(no Kubernetes cluster is reachable here), serveConfigV2 against Ray's ServeDeploySchema,
versions and images against the pins, node groups against cluster.yaml."""

from __future__ import annotations

import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema
from typer.testing import CliRunner

from rayops.cli import app
from rayops.config import load_config, validate_config
from rayops.demo import config_path
from rayops.errors import ConfigError
from rayops.launch.kuberay import RAY_VERSION, manifests

ROOT = Path(__file__).parents[2]
CLUSTER = ROOT / "cluster.yaml"
IMAGE = "registry.example/rayops:0.1.0"
PORTABLE = [
    "storage.root=s3://lake-bucket/rayops",
    "tracking.uri=http://mlflow.ml:5000",
    "serve.auth_token_env=RAYOPS_SERVE_TOKEN",
]


def _strict(properties: dict, required: list[str] | None = None) -> dict:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "required": required if required is not None else list(properties),
    }


STRING, INT, BOOL = {"type": "string"}, {"type": "integer", "minimum": 0}, {"type": "boolean"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
SECRET_REF = _strict(
    {"valueFrom": _strict({"secretKeyRef": _strict({"name": STRING, "key": STRING})})}
)
CONTAINER = _strict(
    {
        "name": STRING,
        "image": STRING,
        "resources": _strict({"requests": STRING_MAP, "limits": STRING_MAP}),
        "volumeMounts": {"type": "array", "items": _strict({"name": STRING, "mountPath": STRING})},
        "ports": {"type": "array", "items": _strict({"name": STRING, "containerPort": INT})},
        "env": {
            "type": "array",
            "items": _strict({"name": STRING, "valueFrom": SECRET_REF["properties"]["valueFrom"]}),
        },
    },
    required=["name", "image", "resources"],
)
TEMPLATE = _strict(
    {
        "spec": _strict(
            {
                "containers": {"type": "array", "minItems": 1, "items": CONTAINER},
                "volumes": {
                    "type": "array",
                    "items": _strict({"name": STRING, "configMap": _strict({"name": STRING})}),
                },
            }
        )
    }
)
CLUSTER_SPEC = _strict(
    {
        "rayVersion": {"const": RAY_VERSION},
        "enableInTreeAutoscaling": BOOL,
        "authOptions": _strict({"mode": {"enum": ["token"]}}),
        "headGroupSpec": _strict({"rayStartParams": STRING_MAP, "template": TEMPLATE}),
        "workerGroupSpecs": {
            "type": "array",
            "items": _strict(
                {
                    "groupName": {"type": "string", "pattern": "^[a-z0-9-]+$"},
                    "replicas": INT,
                    "minReplicas": INT,
                    "maxReplicas": INT,
                    "rayStartParams": STRING_MAP,
                    "template": TEMPLATE,
                }
            ),
        },
        "gcsFaultToleranceOptions": _strict(
            {
                "redisAddress": STRING,
                "redisPassword": SECRET_REF,
                "externalStorageNamespace": STRING,
            }
        ),
    },
    required=[
        "rayVersion",
        "enableInTreeAutoscaling",
        "authOptions",
        "headGroupSpec",
        "workerGroupSpecs",
    ],
)
METADATA = _strict({"name": {"type": "string", "pattern": "^[a-z0-9-]+$"}})
SCHEMAS = {
    "ConfigMap": _strict(
        {
            "apiVersion": {"const": "v1"},
            "kind": {"const": "ConfigMap"},
            "metadata": METADATA,
            "data": STRING_MAP,
        }
    ),
    "RayCluster": _strict(
        {
            "apiVersion": {"const": "ray.io/v1"},
            "kind": {"const": "RayCluster"},
            "metadata": METADATA,
            "spec": CLUSTER_SPEC,
        }
    ),
    "RayJob": _strict(
        {
            "apiVersion": {"const": "ray.io/v1"},
            "kind": {"const": "RayJob"},
            "metadata": METADATA,
            "spec": _strict(
                {
                    "entrypoint": STRING,
                    "shutdownAfterJobFinishes": {"const": True},
                    "ttlSecondsAfterFinished": INT,
                    "rayClusterSpec": CLUSTER_SPEC,
                }
            ),
        }
    ),
    "RayService": _strict(
        {
            "apiVersion": {"const": "ray.io/v1"},
            "kind": {"const": "RayService"},
            "metadata": METADATA,
            "spec": _strict({"serveConfigV2": STRING, "rayClusterConfig": CLUSTER_SPEC}),
        }
    ),
}


@pytest.fixture(scope="module")
def cfg():
    return load_config(config_path(), PORTABLE)


@pytest.fixture(scope="module")
def generated(cfg) -> dict[str, dict]:
    return {m["kind"]: m for m in manifests(cfg, IMAGE, CLUSTER)}


def test_every_manifest_passes_the_strict_schema(generated):
    assert set(generated) == set(SCHEMAS)
    for kind, manifest in generated.items():
        jsonschema.validate(manifest, SCHEMAS[kind])


def test_serve_config_v2_is_a_valid_serve_config_with_the_pipeline_inline(cfg, generated):
    service = generated["RayService"]["spec"]
    parsed = ServeDeploySchema.parse_obj(yaml.safe_load(service["serveConfigV2"]))
    assert parsed.http_options.host == "0.0.0.0"  # the pod's address, token required
    (application,) = parsed.applications
    assert application.import_path == "rayops.serve:build_app"
    inline = validate_config(application.args["pipeline"])
    assert inline == cfg.with_overrides({"serve.host": "0.0.0.0"})
    assert str(ROOT) not in service["serveConfigV2"]
    options = service["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert options["redisAddress"] == "redis:6379" and options["externalStorageNamespace"]
    for template in _templates(service["rayClusterConfig"]):
        (container,) = template["spec"]["containers"]
        assert {
            "name": "RAYOPS_SERVE_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "churn-serve-token", "key": "token"}},
        } in container["env"]


def _templates(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]


def test_versions_images_and_groups_match_the_pins_and_cluster_yaml(generated):
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"ray[data,train,tune,serve]=={RAY_VERSION}" in deps
    nodes = yaml.safe_load(CLUSTER.read_text())["available_node_types"]
    for kind, key in (
        ("RayCluster", "spec"),
        ("RayJob", "rayClusterSpec"),
        ("RayService", "rayClusterConfig"),
    ):
        spec = generated[kind]["spec"] if key == "spec" else generated[kind]["spec"][key]
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
        assert set(groups) == {"cpu-worker", "gpu-worker"}
        for name, group in groups.items():
            node = nodes[name.replace("-", "_")]
            (container,) = group["template"]["spec"]["containers"]
            gpus = node["resources"].get("GPU", 0)
            assert container["image"] == f"{IMAGE}-{'gpu' if gpus else 'cpu'}"
            assert container["resources"]["limits"].get("nvidia.com/gpu") == (
                str(gpus) if gpus else None
            )
            # a node type's CPUs but one (the kubelet's): the pod fits on its node
            assert container["resources"]["limits"]["cpu"] == str(node["resources"]["CPU"] - 1)
            assert (group["minReplicas"], group["maxReplicas"]) == (
                node["min_workers"],
                node["max_workers"],
            )
        (head,) = spec["headGroupSpec"]["template"]["spec"]["containers"]
        assert head["image"] == f"{IMAGE}-cpu"
    job = generated["RayJob"]["spec"]
    assert job["entrypoint"] == (
        "python -m rayops ingest /home/ray/pipeline/pipeline.yaml && "
        "python -m rayops train /home/ray/pipeline/pipeline.yaml"
    )
    pipeline = yaml.safe_load(generated["ConfigMap"]["data"]["pipeline.yaml"])
    assert pipeline["storage"]["root"] == "s3://lake-bucket/rayops"


@pytest.mark.parametrize(
    "override, message",
    [
        ("storage.root=/data/lake", r"storage.root '/data/lake' is a local folder"),
        ("tracking.uri=sqlite:////data/mlflow.db", r"tracking.uri .* is not an MLflow server"),
        (
            "serve.auth_token_env=null",
            r"requests must carry a bearer token: set "
            r"serve.auth_token_env",
        ),
        (
            "tracking.uri=http://127.0.0.1:5000",
            r"tracking.uri is 'http://127.0.0.1:5000' .* "
            r"inside a pod that address is the pod itself",
        ),
        ("storage.endpoint_url=http://localhost:9000", r"inside a pod that address is the pod"),
    ],
)
def test_what_cannot_run_on_kubernetes_is_refused(override, message):
    key = override.split("=")[0]
    overrides = [o for o in PORTABLE if not o.startswith(key)] + [override]
    with pytest.raises(ConfigError, match=message):
        manifests(load_config(config_path(), overrides), IMAGE, CLUSTER)


def test_the_command_writes_the_four_manifests(tmp_path):
    args = [
        "k8s",
        str(config_path()),
        "--image",
        IMAGE,
        "--cluster",
        str(CLUSTER),
        "--output",
        str(tmp_path),
    ]
    for override in PORTABLE:
        args += ["--set", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["configmap.yaml", "raycluster.yaml", "rayjob.yaml", "rayservice.yaml"]
    for name in written:
        manifest = yaml.safe_load((tmp_path / name).read_text())
        jsonschema.validate(manifest, SCHEMAS[manifest["kind"]])
