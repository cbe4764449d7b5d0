"""Training on a real Ray cluster: worker failures, checkpoints on the S3 endpoint, seeds,
early stopping, precision, data loading."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import psutil
import pytest
import ray
from mlflow import MlflowClient

from rayops import tracking
from rayops.data.ingest import file_source, ingest
from rayops.runtime import setup_logging
from rayops.storage import root_of
from rayops.train import run_training
from rayops.train.driver import load_inputs
from tests.helpers import (
    assert_resumed_once,
    demo_config,
    majority_accuracy,
    write_demo_data,
)
from tests.integration.conftest import list_keys

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _dataset(cfg, rows=3000):
    write_demo_data(file_source(cfg).location, rows=rows, files=2)
    return ingest(cfg)


@pytest.fixture(scope="module")
def local(tmp_path_factory, ray_start_4_cpus):
    """A local lake with one curated version (2000 rows) that the tests below train on,
    each in its own MLflow experiment (every run has its own checkpoint folder)."""
    cfg = demo_config(tmp_path_factory.mktemp("training"))
    return cfg, _dataset(cfg, rows=2000)


EPOCHS = 30  # of the run whose worker is killed


class WorkerKiller(threading.Thread):
    """Kills one training worker process (SIGKILL: a Ray Train worker, or the Ray task a run
    of one worker trains in) of this test process's Ray cluster (its environment names that
    cluster's temp dir: the other test process trains too) once `after` new checkpoints
    exist."""

    def __init__(self, cfg, after: int = 2) -> None:
        super().__init__(daemon=True)
        self.checkpoints = root_of(cfg.storage).join("checkpoints")
        self.before = self._paths()
        self.after, self.killed = after, None
        self.done = threading.Event()

    def _paths(self) -> set[str]:
        return {i.path for i in self.checkpoints.list_files() if i.path.endswith(".pt")}

    def run(self) -> None:
        seen: set[str] = set()
        while not self.done.is_set() and len(seen) < self.after:
            seen |= self._paths() - self.before
            time.sleep(0.2)
        ours = os.environ["RAY_TMPDIR"]  # tests/conftest.py: one per test process
        for proc in psutil.process_iter(["cmdline"]):
            titles = proc.info["cmdline"] or []
            if not any(t.startswith(("ray::RayTrainWorker", "ray::train:")) for t in titles):
                continue
            try:
                if proc.environ().get("RAY_TMPDIR") != ours:
                    continue
            except psutil.Error:  # gone, or not ours to read
                continue
            os.kill(proc.pid, signal.SIGKILL)
            self.killed = proc.pid
            return


def test_killed_worker_resumes_from_s3_checkpoint(
    tmp_path, ray_start_4_cpus, s3_endpoint, s3_bucket
):
    cfg = demo_config(
        tmp_path,
        **{
            "storage.root": f"s3://{s3_bucket}/lake",
            "storage.endpoint_url": s3_endpoint,
            # epochs enough for the kill to land mid-run (one takes ~0.1 s here)
            "train.epochs": EPOCHS,
            "train.early_stopping_patience": "null",
            "train.max_failures": 1,
            "train.num_workers": 1,  # trains in one Ray task: its process is the one killed
            "train.cpus_per_worker": 0.5,
        },
    )
    version = _dataset(cfg)
    # Raw files, the curated version and its state all live in the bucket.
    assert sorted(list_keys(s3_endpoint, s3_bucket, "lake/raw/")) == [
        "lake/raw/churn/part-0000.csv",
        "lake/raw/churn/part-0001.csv",
    ]
    assert version.uri == f"s3://{s3_bucket}/lake/curated/churn/rows@v1"
    keys = list_keys(s3_endpoint, s3_bucket, "lake/curated/churn/")
    assert "lake/curated/churn/rows/_delta_log/00000000000000000001.json" in keys
    assert any(
        k.startswith("lake/curated/churn/rows/rayops_split=train/") and k.endswith(".parquet")
        for k in keys
    )
    assert any(
        k.startswith("lake/curated/churn/quarantine/") and k.endswith(".parquet") for k in keys
    )
    assert sum(k.startswith("lake/curated/churn/state/") for k in keys) == 1
    assert version.manifest.rows.read == 3000
    killer = WorkerKiller(cfg, after=2)  # after the second epoch of this run
    killer.start()
    try:
        failed_over = run_training(cfg, version)
    finally:
        killer.done.set()
    assert killer.killed is not None, "no training worker was killed"
    # all epochs, each once, the ones after the failure resumed from the last checkpoint
    assert assert_resumed_once(MlflowClient(cfg.tracking.uri), failed_over.run_id, EPOCHS) >= 2
    # what the restored model and optimizer went on to learn: better than the majority
    assert failed_over.metrics["valid_accuracy"] > majority_accuracy(version) + 0.02
    assert failed_over.checkpoint_path.startswith(f"{s3_bucket}/lake/checkpoints/")
    checkpoints = list_keys(s3_endpoint, s3_bucket, "lake/checkpoints/")
    assert any(k.endswith("checkpoint.pt") for k in checkpoints), checkpoints


def test_failures_beyond_max_failures_fail_the_run(local):
    base, version = local
    # The kill lands after the first epoch; the epochs after it are there so that it
    # lands before the end even on a slow machine (an epoch here can take 0.1 s).
    cfg = base.with_overrides(
        {
            "tracking.experiment": "max-failures",
            "train.epochs": 300,
            "train.max_failures": 0,
            "train.cpus_per_worker": 0.5,
        }
    )
    killer = WorkerKiller(cfg, after=1)
    killer.start()
    with pytest.raises(Exception) as failure:
        run_training(cfg, version)
    killer.done.set()
    assert killer.killed is not None
    assert (
        "RayTrainWorker" in str(failure.value)
        or "died" in str(failure.value).lower()
        or ("fail" in str(failure.value).lower())
    )
    runs = MlflowClient(cfg.tracking.uri).search_runs(
        [tracking.experiment_id(cfg.tracking, cfg.experiment_name)],
        "attributes.run_name = 'churn-train'",
    )
    assert [r.info.status for r in runs] == ["FAILED"]


def _in_this_process(cfg, version) -> dict[str, float]:
    """The loop's last report, trained in this process (Ray Train's local mode: no
    controller or worker processes), with no checkpoint folder and no MLflow run."""
    import torch
    from ray.train import ScalingConfig

    from rayops.families import family_named
    from rayops.train.driver import loop_config

    trainer, loop_per_worker = family_named(cfg.model.family).trainer()
    loop = loop_config(cfg, version, load_inputs(version), run_name=None, run_id=None)
    threads = torch.get_num_threads()  # the loop sets the worker's
    try:
        return (
            trainer(
                loop_per_worker,
                train_loop_config=loop.for_ray(),
                scaling_config=ScalingConfig(num_workers=0),
            )
            .fit()
            .metrics
        )
    finally:
        torch.set_num_threads(threads)


def test_same_seed_same_metrics_bf16_and_early_stopping(local, capsys):
    """Two runs with one seed, one on a Ray Train worker and one in this process: the same
    metrics. A rate too high to settle: validation stops improving, the run stops 2 epochs
    after its best one and keeps the best epoch's model, not the last; in bf16 on the CPU
    it still learns."""
    base, version = local
    cfg = base.with_overrides(
        {
            "tracking.experiment": "seed",
            "train.num_workers": 1,
            "train.epochs": 12,
            "train.data_loading": "memory",
            "train.precision": "bf16",
            "train.learning_rate": 0.05,
            "train.early_stopping_patience": 2,
            "train.lr_schedule": "constant",
        }
    )
    setup_logging(verbose=True)  # a console, as the CLI sets up: epoch lines are shown
    capsys.readouterr()
    first = run_training(cfg, version)
    shown = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch")]
    f1 = {
        int(m.step): m.value
        for m in MlflowClient(cfg.tracking.uri).get_metric_history(first.run_id, "valid_f1")
    }
    assert [line.split()[1] for line in shown] == [f"{e}/12" for e in sorted(f1)], shown
    assert all("valid_f1" in line and "valid_accuracy" in line for line in shown)
    best = max(f1, key=lambda epoch: (f1[epoch], -epoch))
    assert max(f1) < 12 and best == max(f1) - 2, f1
    assert first.metrics["epoch"] == best and first.metrics["valid_f1"] == f1[best]
    # bf16 autocast on the CPU learns: better than always answering the majority class
    assert first.metrics["valid_accuracy"] > majority_accuracy(version) + 0.02
    # The same loop and seed again: it stops at the same epoch with the same numbers.
    loss = {
        int(m.step): m.value
        for m in MlflowClient(cfg.tracking.uri).get_metric_history(first.run_id, "valid_loss")
    }
    again = _in_this_process(cfg, version)
    assert int(again["epoch"]) == max(f1)
    assert again["valid_loss"] == pytest.approx(loss[max(f1)], abs=1e-4)
    assert again["valid_f1"] == pytest.approx(f1[max(f1)], abs=0.01)


def test_driver_side_and_distributed_loading_give_the_same_inputs(local):
    _, version = local
    small = load_inputs(version)  # read on the driver, into the object store
    large = load_inputs(version, local_rows=0)  # read by Ray Data tasks
    assert small.datasets == {} and large.in_memory is None
    for split in ("train", "valid"):
        a, b = ray.get(small.in_memory[split]), large.datasets[split].to_pandas()
        assert len(a["label"]) == len(b) == getattr(version.manifest.rows, split) > 0
        assert np.array_equal(a["features"], np.stack(b["features"]))
        assert np.array_equal(a["label"], b["label"].to_numpy())


@pytest.mark.gpu
def test_ddp_on_gpus_with_bf16_learns(tmp_path, ray_start_4_cpus):
    """A CUDA machine only (skipped elsewhere): two workers, one GPU each, NCCL, bf16."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus < 1:
        pytest.skip("the Ray cluster has no GPU")
    cfg = demo_config(
        tmp_path,
        **{
            "train.use_gpu": True,
            "train.precision": "bf16",
            "train.num_workers": min(gpus, 2),
            "train.epochs": 4,
        },
    )
    version = _dataset(cfg)
    outcome = run_training(cfg, version)
    assert outcome.metrics["valid_accuracy"] > majority_accuracy(version)
    assert outcome.metrics["gpu_peak_memory_mb"] > 0
