"""Builders shared by tests: configs pointing at temporary stores, demo data."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rayops.config import PipelineConfig, load_config
from rayops.demo import churn, config_path
from rayops.demo.broker import free_port as free_port  # a free 127.0.0.1 port, for tests
from rayops.storage import Location

# A shadow judged on its failures only, as the integration tests' operate cycles need: a
# better model's answers differ from the champion's, and on a CPU shared with the other
# test worker a p95 of a few dozen requests is noise (a 260 ms stall was seen in CI). The
# agreement and latency bounds themselves are proven in tests/unit/test_operate.py.
SHADOW_ON_FAILURES = {
    "operate.shadow.min_agreement": 0.0,
    "operate.shadow.max_p95_latency_ratio": 1e6,
}


@functools.cache
def _empty_store() -> Path:
    """An empty MLflow sqlite store, made once per test process (removed at its exit)."""
    from mlflow import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="rayops-mlflow-"))
    atexit.register(shutil.rmtree, folder, True)
    MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    return folder / "mlflow.db"


def fresh_tracking_store(db: Path) -> None:
    """An empty MLflow sqlite store at ``db`` (unless one is there): a copy of one made
    once per process, since MLflow's schema migrations take ~2 s of CPU for each new store."""
    if not db.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_empty_store(), db)


def demo_config(tmp: Path, **overrides: Any) -> PipelineConfig:
    """The packaged demo config with its stores under ``tmp`` and small, fast settings."""
    fresh_tracking_store(tmp / "mlflow" / "mlflow.db")
    base = {
        "storage.root": str(tmp / "lake"),
        "tracking.uri": f"sqlite:///{tmp}/mlflow/mlflow.db",
        "train.epochs": 3,
        "train.batch_size": 128,
        "train.learning_rate": 0.005,
        "tune.enabled": False,
        "serve.access_log": False,  # thousands of requests: no line each in the test log
        "serve.mirror_fraction": 0,  # a test that shadows says so
        "checks": "{}",  # the demo's checks judge a well-trained model: tests declare theirs
    }
    base.update(overrides)
    return load_config(config_path(), [f"{k}={v}" for k, v in base.items()])


def write_demo_data(target: Location, rows: int = 3000, seed: int = 7, files: int = 3) -> None:
    churn.write(churn.generate(rows, seed), target, files=files)


def wait_for(
    condition: Callable[[], object],
    timeout_s: float = 90,
    every_s: float = 0.25,
    what: str = "condition",
) -> None:
    """Poll ``condition`` until it is truthy; TimeoutError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout_s:g}s")
        time.sleep(every_s)


def ingest_at_once(cfg: PipelineConfig, count: int = 2) -> list[Any]:
    """``count`` ingests started at the same moment (threads behind a barrier): each one's
    version, or the CommitConflict that lost it the race."""
    from rayops.data.ingest import ingest
    from rayops.data.table import CommitConflict

    outcomes: list[Any] = []
    start = threading.Barrier(count)

    def run() -> None:
        start.wait()
        try:
            outcomes.append(ingest(cfg))
        except CommitConflict as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return outcomes


def assert_resumed_once(client: Any, run_id: str, epochs: int) -> int:
    """The run's epoch history is exactly 1..epochs (each epoch logged once, none missing;
    MLflow lists them in logging order, and the driver logs late what workers could not),
    and it was resumed once, from the checkpoint of epoch k: the epochs after k all report
    ``resumed_from_epoch`` k, so the first new epoch is k + 1. Returns k."""
    steps = [m.step for m in client.get_metric_history(run_id, "epoch")]
    assert sorted(steps) == list(range(1, epochs + 1)), steps
    resumed = {
        m.step: int(m.value) for m in client.get_metric_history(run_id, "resumed_from_epoch")
    }
    k = max(resumed.values())
    assert 0 < k < epochs, resumed
    assert resumed == {e: 0 if e <= k else k for e in range(1, epochs + 1)}, resumed
    return k


def majority_accuracy(version: Any) -> float:
    """Accuracy of always predicting the most common training class: what a model that
    learned nothing scores."""
    counts = version.preprocessor.label_state["counts"]
    return max(counts.values()) / sum(counts.values())


def untrained_bundle(
    cfg: PipelineConfig, version: Any, run_id: str, folder: Path, seed: int = 0
) -> Path:
    """The bundle a run of ``cfg`` on ``version`` saves, with seeded untrained weights:
    a registered model for tests of what happens around a model (the gate, the registry),
    without a training run."""
    import torch

    from rayops.models import MLPModel, build_model
    from rayops.train.driver import architecture, bundle_of

    torch.manual_seed(seed)
    shape = architecture(cfg, version)
    if shape["family"] in ("bpr", "sasrec"):
        from rayops.models.recommend import RecommenderModel, build_network

        model: Any = RecommenderModel(shape["family"], build_network(shape))
    else:
        model = MLPModel(build_model(shape))
    return bundle_of(cfg, version, model, {}, run_id).save(folder)


def killing_once(source: Any, marker: Path) -> Any:
    """A copy of a message source (Kafka, Kinesis) whose read tasks, the first to have
    read its partition's messages, die once (``marker`` on disk tells Ray's retry it
    happened), so that Ray runs that task again."""
    import dataclasses

    import ray.data

    from rayops.data.messages import _PartitionsDatasource

    class KillOnce(_PartitionsDatasource):
        def get_read_tasks(self, parallelism: int, **kwargs: Any) -> list[Any]:
            from ray.data.datasource import ReadTask

            def killing(inner: Any) -> Any:
                def read() -> Any:
                    import os

                    tables = list(inner())
                    if not os.path.exists(marker):
                        marker.touch()
                        os._exit(1)
                    yield from tables

                return read

            return [
                ReadTask(killing(t.read_fn), t.metadata)
                for t in super().get_read_tasks(parallelism, **kwargs)
            ]

    class Killing(type(source)):  # type: ignore[misc]
        def read(self, items: Any, columns: Any) -> Any:
            return ray.data.read_datasource(
                KillOnce(self, list(items), list(columns)), override_num_blocks=len(items)
            )

    return Killing(**{f.name: getattr(source, f.name) for f in dataclasses.fields(source)})


def fitted_bundle(
    cfg: PipelineConfig, version: Any, run_id: str, folder: Path, steps: int = 300, seed: int = 0
) -> Path:
    """The bundle a run of ``cfg`` on ``version`` saves, its MLP fitted here in a few
    hundred full-batch Adam steps (a classifier of the curated training rows): a model with
    learned behaviour for tests of checks, without a Ray Train run."""
    import torch

    from rayops.models import MLPModel, build_model
    from rayops.train.driver import architecture, bundle_of

    torch.manual_seed(seed)
    network = build_model(architecture(cfg, version))
    pre = version.preprocessor
    train = version.table("train")
    targets = pre.targets(train)
    keep = pre.rules.known(targets)
    x = torch.tensor(pre.transform(train)[keep], dtype=torch.float32)
    y = torch.tensor(pre.rules.learned(targets)[keep], dtype=pre.rules.torch_label_dtype())
    loss_fn, optimizer = pre.rules.torch_loss(), torch.optim.Adam(network.parameters(), 0.01)
    network.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(network(x), y).backward()
        optimizer.step()
    network.eval()
    return bundle_of(cfg, version, MLPModel(network), {}, run_id).save(folder)


def ingest_dying_before_commit(cfg: PipelineConfig, monkeypatch: Any) -> None:
    """An ingest whose driver dies just before its Delta commit (what a killed driver
    leaves: rows written, never committed, and the source's positions with them)."""
    import pytest

    from rayops.data import table as delta
    from rayops.data.ingest import ingest

    def killed(*args: Any, **kwargs: Any) -> None:
        raise SystemExit("the driver died before its commit")

    with monkeypatch.context() as patched:
        patched.setattr(delta, "commit", killed)
        with pytest.raises(SystemExit):
            ingest(cfg)
