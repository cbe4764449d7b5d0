"""A simulated cluster with cluster.yaml's shape: Ray's autoscaler with the fake multi-node
provider (`rayops simulated-cluster`), node types, resources (GPUs included) and limits
taken from the repository's cluster.yaml, token authentication on. Jobs go in through the
authenticated dashboard like `ray job submit` from a laptop; the autoscaler's own log says
which node types it launched and removed."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from rayops.launch.cluster import (
    SIMULATED_ENV,
    read_shape,
    simulated_config,
    simulated_start_command,
)
from tests.helpers import free_port, wait_for
from tests.integration.conftest import (
    BIN,
    REPO,
    _kill_processes_mentioning,
    submit_job,
    wait_http,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IDLE_TIMEOUT_MINUTES = 0.1

# DDP as a training job asks for it: 2 workers of 3 CPUs (more than the 4-CPU head has),
# first without GPUs, then with a GPU each (one job, two trainers in turn). gloo and CPU
# tensors: the simulated GPUs are resources only (torch here is the CPU build). Each worker
# writes where it ran; after each trainer, the job writes the nodes alive and the node
# types the autoscaler had launched so far.
DDP_JOB = """
import json, pathlib, sys, ray, ray.train, torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

def loop(config):
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(256, 4)
    for _ in range(50):
        optimizer.zero_grad()
        loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
        loss.backward()
        optimizer.step()
    rank = ray.train.get_context().get_world_rank()
    pathlib.Path(config["out"], f"worker-{rank}.json").write_text(json.dumps({
        "node": ray.get_runtime_context().get_node_id(), "gpus": ray.get_gpu_ids(),
        "loss": loss.item()}))

folder, monitor_log = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for kind in ("cpu", "gpu"):
    out, gpu = folder / kind, kind == "gpu"
    out.mkdir(parents=True)
    TorchTrainer(loop, train_loop_config={"out": str(out)},
                 scaling_config=ScalingConfig(num_workers=2, use_gpu=gpu,
                                              resources_per_worker={"CPU": 3, "GPU": int(gpu)}),
                 torch_config=TorchConfig(backend="gloo"),
                 run_config=RunConfig(storage_path=str(out), name="ddp")).fit()
    pathlib.Path(out, "nodes.json").write_text(json.dumps(
        {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}))
    pathlib.Path(out, "monitor.log").write_text(monitor_log.read_text(errors="replace"))
"""


@dataclass
class Simulated:
    address: str
    token: str
    env: dict[str, str]
    logs: Path

    def launched(self, monitor_log: Path | None = None) -> list[str]:
        """Node types the autoscaler added, in order (its event summary lines), from its
        log now or from a copy of it taken earlier."""
        return [
            t
            for n, t in re.findall(
                r"Adding (\d+) node\(s\) of type (\S+)\.", self._monitor(monitor_log)
            )
            for _ in range(int(n))
        ]

    def removed(self) -> list[str]:
        return [
            t
            for n, t in re.findall(r"Removing (\d+) nodes of type (\S+) \(idle\)", self._monitor())
            for _ in range(int(n))
        ]

    def alive_nodes(self) -> list[dict]:
        reply = requests.get(
            f"{self.address}/api/v0/nodes?detail=1",
            timeout=10,
            headers={"Authorization": f"Bearer {self.token}"},
        )
        reply.raise_for_status()
        return [n for n in reply.json()["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def _monitor(self, monitor_log: Path | None = None) -> str:
        """The autoscaler's event summaries (one line per event in its own log)."""
        text = (monitor_log or self.logs / "monitor.log").read_text(errors="replace")
        return "\n".join(
            ln.split(":event_summary:", 1)[1] for ln in text.splitlines() if ":event_summary:" in ln
        )


@pytest.fixture(scope="module")
def simulated_cluster(tmp_path_factory) -> Iterator[Simulated]:
    temp = Path(f"/tmp/rayops-sim-{uuid.uuid4().hex[:6]}")
    gcs, dashboard = free_port(), free_port()
    shape = read_shape(REPO / "cluster.yaml")
    config = tmp_path_factory.mktemp("simulated") / "autoscaling.yaml"
    config.write_text(yaml.safe_dump(simulated_config(shape, gcs, IDLE_TIMEOUT_MINUTES)))
    token = secrets.token_hex(32)
    env = {
        **os.environ,
        **SIMULATED_ENV,
        "RAY_AUTH_TOKEN": token,
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
    }
    command = simulated_start_command(shape, config, gcs, dashboard)
    command[0] = str(BIN / "ray")
    # Its own agent ports: the session's cluster already holds Ray's defaults.
    command += [
        "--ray-client-server-port",
        str(free_port()),
        "--dashboard-agent-listen-port",
        str(free_port()),
        "--dashboard-agent-grpc-port",
        str(free_port()),
        "--runtime-env-agent-port",
        str(free_port()),
        "--metrics-export-port",
        str(free_port()),
        "--temp-dir",
        str(temp),
        "--disable-usage-stats",
    ]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=180, env=env)
        address = f"http://127.0.0.1:{dashboard}"
        wait_http(f"{address}/api/version", 120)
        yield Simulated(address, token, env, temp / "session_latest" / "logs")
    finally:
        # `ray stop` would stop every cluster on the machine, the session's one too.
        _kill_processes_mentioning([str(temp), f"127.0.0.1:{gcs}"])
        shutil.rmtree(temp, ignore_errors=True)


def test_the_simulation_has_cluster_yaml_shape_and_refuses_requests_without_the_token(
    simulated_cluster,
):
    reply = requests.get(f"{simulated_cluster.address}/api/v0/nodes", timeout=10)
    assert reply.status_code == 401
    (head,) = simulated_cluster.alive_nodes()  # min_workers 0 everywhere: the head alone
    assert head["resources_total"]["CPU"] == 4  # cluster.yaml's head
    denied = subprocess.run(
        [str(BIN / "ray"), "job", "list", "--address", simulated_cluster.address],
        capture_output=True,
        text=True,
        timeout=120,
        env={**simulated_cluster.env, "RAY_AUTH_TOKEN": "not-the-token" + "0" * 20},
    )
    assert denied.returncode != 0


def _workers(folder: Path) -> list[dict]:
    """For each worker of one trainer, the resources of the node it ran on."""
    workers = [json.loads(p.read_text()) for p in sorted(folder.glob("worker-*.json"))]
    nodes = json.loads((folder / "nodes.json").read_text())
    assert len(workers) == 2 and all(w["loss"] < 1.0 for w in workers)  # both trained
    return [{**nodes[w["node"]], "gpu_ids": w["gpus"]} for w in workers]


def test_trainers_launch_only_the_node_types_they_need_and_idle_nodes_go(
    tmp_path, simulated_cluster
):
    sim = simulated_cluster
    # No --working-dir: simulated nodes share this machine's disk and one Ray session
    # folder, where a node's runtime-env agent deletes a working dir once its own workers
    # are done with it, under a driver still using it.
    script = tmp_path / "ddp_job.py"
    script.write_text(DDP_JOB)
    job = submit_job(
        sim.address, None, str(script), str(tmp_path), str(sim.logs / "monitor.log"), env=sim.env
    )
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]

    for node in _workers(tmp_path / "cpu"):
        assert node["CPU"] == 16 and "GPU" not in node  # cluster.yaml's cpu_worker
    # by the end of the CPU trainer: never a GPU node
    after_cpu = sim.launched(tmp_path / "cpu" / "monitor.log")
    assert after_cpu and set(after_cpu) == {"cpu_worker"}

    for node in _workers(tmp_path / "gpu"):
        assert node["CPU"] == 48 and node["GPU"] == 4  # cluster.yaml's gpu_worker
        assert len(node["gpu_ids"]) == 1
    assert sim.launched().count("gpu_worker") == 1  # 2 workers x 1 GPU: one 4-GPU node

    # The node goes first; the autoscaler's log says so at its next update.
    wait_for(
        lambda: len(sim.alive_nodes()) == 1 and sorted(sim.removed()) == sorted(sim.launched()),
        timeout_s=120,
        every_s=1,
        what="idle workers removed, and the autoscaler's log saying so",
    )
