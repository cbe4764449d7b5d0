"""cluster.yaml's shape as rayops reads it, and the simulated cluster's autoscaling config
generated from it (run for real by tests/integration/test_simulated_cluster.py)."""

from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import validate_config
from typer.testing import CliRunner

from rayops.cli import app
from rayops.errors import ConfigError
from rayops.launch.cluster import SIMULATED_HEAD, read_shape, simulated_config

CLUSTER = Path(__file__).parents[2] / "cluster.yaml"


def test_the_simulation_has_every_node_type_of_cluster_yaml():
    launcher = yaml.safe_load(CLUSTER.read_text())
    config = simulated_config(read_shape(CLUSTER), gcs_port=6390, idle_timeout_minutes=0.5)
    validate_config(config)  # Ray's own schema for autoscaling configs
    assert config["provider"]["gcs_address"] == "127.0.0.1:6390"
    assert config["idle_timeout_minutes"] == 0.5
    assert config["max_workers"] == launcher["max_workers"]
    types = config["available_node_types"]
    head = launcher["available_node_types"].pop(launcher["head_node_type"])
    assert types.pop(SIMULATED_HEAD)["resources"] == head["resources"]
    assert set(types) == set(launcher["available_node_types"])  # same names
    for name, node in launcher["available_node_types"].items():
        simulated = dict(types[name]["resources"])
        assert simulated.pop("object_store_memory") > 0
        assert simulated == node["resources"]  # GPU counts included
        assert (types[name]["min_workers"], types[name]["max_workers"]) == (
            node.get("min_workers", 0),
            node["max_workers"],
        )


def test_a_cluster_file_without_node_types_names_the_problem(tmp_path):
    broken = tmp_path / "cluster.yaml"
    broken.write_text("cluster_name: x\nhead_node_type: head\n")
    with pytest.raises(ConfigError, match="available_node_types"):
        read_shape(broken)


def test_simulated_cluster_command_writes_the_config_and_the_start_line(tmp_path):
    output = tmp_path / "simulated.yaml"
    result = CliRunner().invoke(
        app,
        ["simulated-cluster", "--cluster", str(CLUSTER), "--port", "6391", "--output", str(output)],
    )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(output.read_text())["provider"]["type"] == "fake_multinode"
    start = next(ln for ln in result.output.splitlines() if "ray start --head" in ln)
    assert start.startswith("RAY_FAKE_CLUSTER=1 RAY_AUTH_MODE=token ")
    assert f"--autoscaling-config {output}" in start and "--port 6391" in start
    assert "--num-cpus 4" in start  # cluster.yaml's head
