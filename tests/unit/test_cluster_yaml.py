"""cluster.yaml as `ray up` reads it (Ray's own schema and defaults), and what makes it safe
to run: the image on every node, nothing public but SSH from one CIDR, least-privilege
instance profiles, token authentication, only code synced. No AWS call is made here."""

import json
import re
import tomllib
from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).parents[2]
CLUSTER = ROOT / "cluster.yaml"


def _config() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def _version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_cluster_yaml_passes_ray_autoscaler_schema():
    # The same two steps `ray up` runs before it talks to AWS; both raise on any problem.
    prepared = prepare_config(_config())
    validate_config(prepared)
    assert prepared["head_node_type"] == "head"


def test_cluster_has_cpu_and_multi_gpu_groups():
    config = _config()
    assert config["provider"]["type"] == "aws"
    nodes = config["available_node_types"]
    gpu = nodes["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 2 and gpu["min_workers"] <= gpu["max_workers"]
    assert "GPU" not in nodes["cpu_worker"]["resources"]
    assert sum(n.get("max_workers", 0) for n in nodes.values()) >= config["max_workers"] - 1


def test_every_node_runs_the_rayops_image_of_this_version():
    config = _config()
    cpu_image = config["docker"]["image"]
    gpu_image = config["available_node_types"]["gpu_worker"]["docker"]["worker_image"]
    assert cpu_image.endswith(f"/rayops:{_version()}-cpu")
    assert gpu_image.endswith(f"/rayops:{_version()}-gpu")
    assert (
        "--gpus all" in config["available_node_types"]["gpu_worker"]["docker"]["worker_run_options"]
    )
    assert not config["setup_commands"]  # nothing installed at start-up: the image has it


def test_nothing_is_public_but_ssh_from_one_cidr():
    config = _config()
    (rule,) = config["provider"]["security_group"]["IpPermissions"]
    assert (rule["FromPort"], rule["ToPort"], rule["IpProtocol"]) == (22, 22, "tcp")
    assert [r["CidrIp"] for r in rule["IpRanges"]] == ["RAYOPS_SSH_CIDR"]
    assert "0.0.0.0" not in CLUSTER.read_text().split("never 0.0.0.0/0")[1]
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert re.search(r"mlflow server --host \"\$\(hostname -I", head)  # private address


def test_instance_profiles_are_least_privilege():
    nodes = _config()["available_node_types"]
    profiles = {name: n["node_config"]["IamInstanceProfile"]["Arn"] for name, n in nodes.items()}
    assert profiles["head"].endswith("instance-profile/rayops-head")
    assert profiles["cpu_worker"] == profiles["gpu_worker"]
    assert profiles["cpu_worker"].endswith("instance-profile/rayops-worker")
    policies = {
        who: json.loads((ROOT / "deploy/aws" / f"{who}-policy.json").read_text())
        for who in ("head", "worker")
    }
    for who, policy in policies.items():
        actions = {
            a
            for s in policy["Statement"]
            for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])
        }
        assert not any(a.endswith(":*") or a == "*" for a in actions), who
        s3 = [s for s in policy["Statement"] if any(a.startswith("s3:") for a in s["Action"])]
        assert all("RAYOPS_BUCKET" in s["Resource"] for s in s3), who
    pull = {
        "ecr:BatchGetImage",
        "ecr:GetDownloadUrlForLayer",
        "ecr:BatchCheckLayerAvailability",
        "ecr:GetAuthorizationToken",
    }
    worker_actions = {
        a
        for s in policies["worker"]["Statement"]
        for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])
    }
    assert all(a.startswith("s3:") or a in pull for a in worker_actions)  # no EC2, no IAM
    for policy in policies.values():  # both pull rayops' image, and only that one
        (image,) = [s for s in policy["Statement"] if s["Sid"] == "PullTheImage"]
        assert image["Resource"] == "arn:aws:ecr:us-west-2:RAYOPS_ACCOUNT:repository/rayops"
    registry = _config()["docker"]["image"].split("/")[0]
    login = " ".join(_config()["initialization_commands"])  # before Docker pulls
    assert f"docker login --username AWS --password-stdin {registry}" in login
    head_actions = {
        a
        for s in policies["head"]["Statement"]
        for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])
    }
    assert "ec2:RunInstances" in head_actions and "iam:PassRole" in head_actions


def test_token_authentication_on_every_node_and_only_code_synced():
    config = _config()
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    assert {".venv", "lake", "mlflow"} <= set(config["rsync_exclude"])
    assert ".gitignore" in config["rsync_filter"]


def test_jobs_on_the_head_learn_where_its_mlflow_server_listens():
    import subprocess

    commands = _config()["head_start_ray_commands"]
    server = next(c for c in commands if "mlflow server" in c)
    start = next(c for c in commands if "ray start --head" in c)
    port = re.search(r"--port (\d+)", server).group(1)
    # Exported in the `ray start` command itself: the raylet and the job drivers it starts
    # inherit it (each command of the list runs in its own shell).
    probe = start.split("ray start")[0] + 'echo "$RAYOPS_MLFLOW_URI"'
    uri = subprocess.run(
        ["bash", "-c", probe], capture_output=True, text=True, timeout=30
    ).stdout.strip()
    assert re.fullmatch(rf"http://[0-9a-f.:]+:{port}", uri), uri
    example = (ROOT / "jobs" / "configs" / "churn-s3.yaml").read_text()
    assert "uri: ${RAYOPS_MLFLOW_URI" in example
