"""`ray job submit --working-dir` of the thin job entrypoints to a `ray start --head` cluster."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from rayops.data.ingest import file_source
from tests.helpers import demo_config, write_demo_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).parents[2]


def _submit(address: str, workdir: Path, *job: str) -> subprocess.CompletedProcess:
    """`ray job submit`, retried while the new cluster's job agent is still starting."""
    ray = str(Path(sys.executable).parent / "ray")
    deadline = time.monotonic() + 120
    while True:
        result = subprocess.run(
            [ray, "job", "submit", "--address", address, "--working-dir", str(workdir), "--",
             sys.executable, *job],
            capture_output=True, text=True, timeout=600,
        )
        if "No available agent" not in result.stderr or time.monotonic() > deadline:
            return result
        time.sleep(2)


def test_ingest_and_train_jobs_on_a_cluster(tmp_path, ray_head_cluster):
    cfg = demo_config(tmp_path, **{"train.epochs": 2, "train.num_workers": 2,
                                   "train.cpus_per_worker": 0.5})
    write_demo_data(file_source(cfg).location, rows=2000, files=2)
    workdir = tmp_path / "job"
    shutil.copytree(REPO / "jobs", workdir / "jobs", ignore=shutil.ignore_patterns("configs"))
    (workdir / "pipeline.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))

    ingest = _submit(ray_head_cluster, workdir, "jobs/ingest.py", "--config", "pipeline.yaml")
    assert ingest.returncode == 0, ingest.stdout[-3000:] + ingest.stderr[-3000:]
    assert "dataset churn/v000001" in ingest.stdout

    train = _submit(ray_head_cluster, workdir, "jobs/train.py", "--config", "pipeline.yaml",
                    "--set", "train.epochs=1")
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert "succeeded" in (train.stdout + train.stderr).lower()
    client = MlflowClient(cfg.tracking.uri)
    champion = client.get_model_version_by_alias(cfg.model_name, "champion")
    run = client.get_run(champion.run_id)
    assert run.data.params["train.epochs"] == "1"
    assert run.data.tags["rayops.dataset_version"] == "churn/v000001"


def test_bad_config_fails_the_job_with_the_key_named(tmp_path, ray_head_cluster):
    workdir = tmp_path / "job"
    shutil.copytree(REPO / "jobs", workdir / "jobs", ignore=shutil.ignore_patterns("configs"))
    (workdir / "bad.yaml").write_text("name: x\ndata: {label: y, task: guess, columns: {}}\n")
    result = _submit(ray_head_cluster, workdir, "jobs/ingest.py", "--config", "bad.yaml")
    assert result.returncode != 0
    assert "data.task" in result.stdout + result.stderr
