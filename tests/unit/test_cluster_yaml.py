from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).parents[2] / "cluster.yaml"


def _config() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_passes_ray_autoscaler_schema():
    # The same two steps `ray up` runs before it talks to AWS; both raise on any problem.
    prepared = prepare_config(_config())
    validate_config(prepared)
    assert prepared["head_node_type"] == "head"


def test_cluster_has_cpu_and_multi_gpu_groups_and_installs_rayops():
    config = _config()
    assert config["provider"]["type"] == "aws"
    nodes = config["available_node_types"]
    gpu = nodes["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 2 and gpu["min_workers"] <= gpu["max_workers"]
    assert "GPU" not in nodes["cpu_worker"]["resources"]
    assert sum(n.get("max_workers", 0) for n in nodes.values()) >= config["max_workers"] - 1
    setup = " ".join(config["setup_commands"])
    assert "pip install -e ." in setup and "~/rayops" in config["file_mounts"]


def test_dashboard_is_not_exposed_on_all_interfaces():
    head = " ".join(_config()["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
