"""What a model family is, and the registry that finds one by name.

A family trains on Ray Train (its trainer class and the loop every worker runs), stores its
model without pickle (its own files in a bundle, loaded back by :meth:`Family.load`) and
predicts (:class:`Model.outputs`). The driver, the gate, Serve and the MLflow pyfunc look a
family up by the name in ``model.family`` or in a bundle (:func:`rayops.families.family_named`),
never branch on it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from rayops.models import session
from rayops.tasks import Task, task_of

if TYPE_CHECKING:
    from ray.train import Checkpoint

    from rayops.config import PipelineConfig


class Model(Protocol):
    """What ``predict``, ``evaluate`` and serving need of a trained model."""

    family: str

    def save(self, folder: Path) -> None: ...

    def outputs(self, x: np.ndarray, probabilities: bool) -> np.ndarray:
        """Class probabilities (rows sum to 1) when ``probabilities``, else the task's
        encoded value as one column."""
        ...


@dataclass(frozen=True)
class LoopConfig:
    """What the driver hands the loop on every worker (Ray Train carries it as
    ``train_loop_config={"loop": ...}``): the validated config itself, never re-read from a
    dict by string keys."""

    cfg: PipelineConfig
    architecture: dict[str, Any]  # the model's shape (see Family.architecture)
    label_state: dict[str, Any]  # the fitted label (the task's encoding)
    meta: dict[str, Any]  # kept in every checkpoint: dataset, architecture, preprocessing
    run_id: str | None = None  # the MLflow run rank 0 writes each epoch's metrics to
    run_name: str | None = None  # names the run's checkpoint folder (resume reads it)
    cache: bool = False  # keep the shard in memory (see train.data_loading)
    feed: Any = None  # the console's mailbox (an actor handle), or None
    # Small data travels through Ray's object store: per split, a reference to the model
    # inputs ({"features", "label"} arrays), each worker taking its rows; None means Ray
    # Data shards (ray.train.get_dataset_shard).
    in_memory: dict[str, Any] | None = None

    @property
    def task(self) -> Task:
        return task_of(self.cfg.data.task)

    def for_ray(self) -> dict[str, Any]:
        return {"loop": self}

    @classmethod
    def of(cls, config: dict[str, Any]) -> LoopConfig:
        """The loop configuration inside Ray Train's ``train_loop_config``."""
        return config["loop"]

    def shard(self, split: str) -> Any:
        """This worker's rows of ``split``: ``(features, label)`` arrays when the driver
        sent the inputs through the object store, else its Ray Data shard. Every worker gets
        as many training rows as the others (DDP steps in lockstep); validation rows are
        all used."""
        import ray
        import ray.train

        if self.in_memory is None:
            return ray.train.get_dataset_shard(split)
        rank, world = session.world()
        columns = ray.get(self.in_memory[split])
        rows = len(columns["label"])
        end = rows // world * world if split == "train" else rows
        return columns["features"][rank:end:world], columns["label"][rank:end:world]

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """This worker's rows of ``split`` as ``(features, label)`` arrays, either way."""
        shard = self.shard(split)
        if isinstance(shard, tuple):
            return shard
        batches = list(shard.iter_batches(batch_size=None, batch_format="numpy"))
        if not batches:
            return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.float32)
        return (
            np.concatenate([b["features"] for b in batches]),
            np.concatenate([b["label"] for b in batches]),
        )


class Family(ABC):
    """A model family: subclasses set ``name``, ``tasks`` and ``step`` and implement the
    methods; :func:`register_family` makes it known."""

    name: ClassVar[str]
    tasks: ClassVar[tuple[str, ...]]  # the tasks it can learn
    step: ClassVar[str] = "epoch"  # what one report of progress is (an epoch, a round)
    # Whether a run of one worker may run the loop in its caller's process (a sweep's
    # trial does: rayops.train.in_process). Only a loop that reports, checkpoints and asks
    # its rank through rayops.models.session, never ray.train directly, can.
    in_process: ClassVar[bool] = False

    @abstractmethod
    def architecture(
        self, cfg: PipelineConfig, n_inputs: int, n_outputs: int, features: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """The model's shape, stored with checkpoints and bundles (with ``family``)."""

    @abstractmethod
    def length(self, cfg: PipelineConfig) -> int:
        """The most steps a run takes."""

    @abstractmethod
    def trainer(self) -> tuple[Any, Callable[[dict[str, Any]], None]]:
        """Ray Train's trainer class for this family, and the loop every worker runs
        (it reads its :class:`LoopConfig` with ``LoopConfig.of(config)``)."""

    @abstractmethod
    def trained_model(self, folder: Path, architecture: dict[str, Any]) -> Model:
        """The model a checkpoint folder holds."""

    @abstractmethod
    def history(
        self, cfg: PipelineConfig, run_name: str, newest: Checkpoint | None
    ) -> list[dict[str, float]]:
        """Every report's metrics up to the run's newest checkpoint, oldest first."""

    @abstractmethod
    def load(self, folder: Path, architecture: dict[str, Any]) -> Model:
        """The model a bundle folder holds (its own files, never a pickle)."""

    def network(self, architecture: dict[str, Any]) -> Any:
        """The PyTorch network, for a family trained by the shared loop
        (:mod:`rayops.models.torch_loop`)."""
        raise NotImplementedError(f"family {self.name!r} brings its own loop")

    def objective(self, loop: LoopConfig) -> Any:
        """What the shared loop minimises and reports for :meth:`network` (see
        :class:`rayops.models.torch_loop.Objective`)."""
        raise NotImplementedError(f"family {self.name!r} brings its own loop")

    def pip_requirements(self) -> list[str]:
        """What the MLflow model needs installed beyond rayops' own requirements."""
        return []
