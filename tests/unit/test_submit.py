"""`rayops submit`: what travels, what the job runs, and what is refused before anything
is submitted (the job itself runs in tests/integration/test_jobs.py)."""

import os
import sys
from pathlib import Path

import pytest
import yaml

from rayops.demo import config_path
from rayops.errors import ConfigError
from rayops.launch.jobs import (
    all_on_this_machine,
    cluster_is_this_machine,
    entrypoint,
    is_loopback,
    relative_keys,
    submit,
    this_machines_addresses,
)


class RecordingClient:
    """Stands in for Ray's JobSubmissionClient where a test only checks what would be sent."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def submit_job(self, **kwargs) -> str:
        workdir = Path(kwargs["runtime_env"]["working_dir"])
        kwargs["files"] = sorted(p.name for p in workdir.iterdir())
        kwargs["pipeline"] = yaml.safe_load((workdir / "pipeline.yaml").read_text())
        self.calls.append(kwargs)
        return kwargs["submission_id"]


def test_a_cluster_is_this_machine_only_if_every_node_is():
    assert is_loopback("http://127.0.0.1:8265") and is_loopback("localhost:8265")
    assert not is_loopback("http://10.0.3.7:8265")
    assert not cluster_is_this_machine("https://ray.example.com")  # not even asked
    here = sorted(this_machines_addresses())
    assert "127.0.0.1" in here
    assert all_on_this_machine(["127.0.0.1", here[-1]])
    # `ray dashboard cluster.yaml` tunnels a head on AWS to 127.0.0.1:8265: its nodes are not
    # this machine, so neither its paths nor this venv's Python mean anything there.
    assert not all_on_this_machine(["127.0.0.1", "203.0.113.9"])
    assert not all_on_this_machine([])


def test_a_relative_path_is_refused_for_another_address_before_anything_is_sent():
    client = RecordingClient()
    with pytest.raises(ConfigError, match=r"storage\.root is a relative path .* s3://"):
        submit(
            "train",
            config_path(),
            address="http://127.0.0.1:8265",
            on_this_machine=False,
            client=client,
        )
    assert client.calls == []


def test_absolute_paths_and_uris_travel_to_another_address(tmp_path):
    client = RecordingClient()
    overrides = [f"storage.root={tmp_path}/lake", "tracking.uri=http://10.0.3.7:5000"]
    assert relative_keys(config_path(), overrides) == {}
    sent = submit(
        "tune",
        config_path(),
        overrides,
        address="http://10.0.3.7:8265",
        on_this_machine=False,
        client=client,
    )
    (call,) = client.calls
    assert call["files"] == ["pipeline.yaml"]  # only the config travels
    assert call["pipeline"]["name"] == "churn"
    assert call["entrypoint"].startswith("python -m rayops tune pipeline.yaml --set ")
    assert "--base-dir" not in call["entrypoint"]  # nothing here means anything there
    assert call["metadata"]["rayops.stage"] == "tune"
    assert call["metadata"]["rayops.pipeline"] == "churn"
    assert call["submission_id"] == sent.submission_id
    assert sent.submission_id.startswith("rayops-churn-tune-")
    assert call["entrypoint_num_cpus"] == 0.5


def test_a_local_cluster_runs_this_interpreter_with_this_folder_as_the_base():
    command = entrypoint(
        "pipeline", local=True, overrides=["train.epochs=2"], resume=False, dataset_version=None
    )
    assert command[:3] == [sys.executable, "-m", "rayops"]
    assert command[3:] == [
        "run",
        "pipeline.yaml",
        "--base-dir",
        os.getcwd(),
        "--set",
        "train.epochs=2",
    ]
    assert entrypoint("deploy", True, [], False, None)[3:5] == ["deploy", "pipeline.yaml"]


def test_stage_and_resume_are_checked():
    with pytest.raises(ConfigError, match="stage 'trian' is not one of ingest, train"):
        entrypoint("trian", True, [], False, None)
    with pytest.raises(ConfigError, match="--resume continues a train or tune run"):
        entrypoint("ingest", True, [], True, None)
