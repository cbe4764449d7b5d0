"""A model family that only this test suite knows: nearest class centroid. Registered by
importing this module (``model.plugins: [tests.integration.centroid_family]``), it goes
through rayops' own stages (train on Ray Train, gate, serve) without a line of rayops
naming it: what a team's own family would do."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
from ray.train import Checkpoint

from rayops.families import register_family
from rayops.models.family import Family, LoopConfig
from rayops.models.torch_loop import all_reduce

CENTROIDS = "centroids.npy"
HISTORY = "history.json"


class CentroidModel:
    """Class probabilities from the distances to each class's mean input row."""

    family = "centroid"

    def __init__(self, centroids: np.ndarray) -> None:
        self.centroids = centroids

    def save(self, folder: Path) -> None:
        np.save(folder / CENTROIDS, self.centroids, allow_pickle=False)

    def outputs(self, x: np.ndarray, probabilities: bool) -> np.ndarray:
        distances = ((x[:, None, :] - self.centroids[None]) ** 2).sum(axis=2)
        scores = np.exp(-(distances - distances.min(axis=1, keepdims=True)))
        return (scores / scores.sum(axis=1, keepdims=True)).astype(np.float32)


def _shard(loop: LoopConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = loop.arrays(split)
    return x.astype(np.float64), y.astype(np.int64)


def centroid_loop(config: dict[str, Any]) -> None:
    """Every worker sums its shard's rows per class; the sums are all-reduced, so every
    worker holds the same centroids; validation metrics are the task's, summed the same way."""
    import torch

    loop = LoopConfig.of(config)
    task, state = loop.task, loop.label_state
    x, y = _shard(loop, "train")
    n = task.n_outputs(state)
    sums = np.stack([x[y == c].sum(axis=0) for c in range(n)])
    counts = np.array([(y == c).sum() for c in range(n)], dtype=np.float64)
    device = torch.device("cpu")
    sums, counts = all_reduce(sums, device), all_reduce(counts, device)
    model = CentroidModel(sums / np.maximum(counts, 1)[:, None])
    vx, vy = _shard(loop, "valid")
    stats = all_reduce(task.sufficient_stats(model.outputs(vx, True), vy, state), device)
    metrics = {**task.metrics_of(stats, state), "epoch": 1, "valid_loss": 0.0, "train_loss": 0.0}
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        model.save(Path(folder))
        (Path(folder) / HISTORY).write_text(json.dumps([metrics]))
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))


class CentroidFamily(Family):
    name = "centroid"
    tasks = ("classification",)
    step = "epoch"

    def architecture(
        self, cfg: Any, n_inputs: int, n_outputs: int, features: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return {"family": self.name, "n_inputs": n_inputs, "n_outputs": n_outputs}

    def length(self, cfg: Any) -> int:
        return 1

    def trainer(self) -> tuple[Any, Any]:
        from ray.train.torch import TorchTrainer

        return TorchTrainer, centroid_loop

    def trained_model(self, folder: Path, architecture: dict[str, Any]) -> CentroidModel:
        return self.load(folder, architecture)

    def history(self, cfg: Any, run_name: str, newest: Checkpoint | None) -> list[dict[str, float]]:
        if newest is None:
            return []
        with newest.as_directory() as folder:
            return json.loads((Path(folder) / HISTORY).read_text())

    def load(self, folder: Path, architecture: dict[str, Any]) -> CentroidModel:
        return CentroidModel(np.load(folder / CENTROIDS, allow_pickle=False))


register_family(CentroidFamily())
