"""What a task is: everything that differs between kinds of prediction (classification,
regression; forecasting and recommendation next), in one place.

A task says how its label is fitted and encoded, which metrics a run reports (with the
direction that is better) and which ranks checkpoints, trials and the gate by default, how
a model's outputs become a response, what a true label sent to ``/feedback`` looks like, and
how two models' answers are compared. The driver, the loops, the gate, evaluation, Serve
and the monitor look a task up by name (:func:`rayops.tasks.task_of`) and never branch on it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

Mode = Literal["min", "max"]

# What every run reports beside its task's metrics: lower is better.
LOSSES: dict[str, Mode] = {"valid_loss": "min", "train_loss": "min"}


@dataclass(frozen=True)
class Scored:
    """A model's metrics on rows with a label (named as in training: ``valid_f1``...), and
    what the plots draw: the actual and predicted values (class indices into ``classes``
    for a classifier)."""

    metrics: dict[str, float]
    actual: np.ndarray
    predicted: np.ndarray
    classes: list[str]


class Task(ABC):
    """One kind of prediction. Subclasses set the class attributes and implement the
    methods; :func:`rayops.tasks.register_task` makes one known by its ``name``."""

    name: ClassVar[str]
    # Every metric a run reports per epoch, with the direction that is better. Config keys
    # that name a metric (tune.metric, gate.metric, gate.max_regression) are checked
    # against it when the config loads.
    metrics: ClassVar[Mapping[str, Mode]]
    default_metric: ClassVar[str]  # ranks checkpoints and trials; the gate's by default
    shown_metric: ClassVar[str]  # the console's epoch line shows it beside the target
    label_types: ClassVar[tuple[str, ...]]  # column types its label may have
    label_kinds: ClassVar[str]  # those types in words, for the error that refuses others
    categorical_label: ClassVar[bool]  # the label is profiled as categories, not numbers
    probabilities: ClassVar[bool]  # models output a probability per class
    feedback_label: ClassVar[Any]  # the annotation of a true label in a /feedback body
    route: ClassVar[str] = "/predict"  # where a served model of this task answers
    default_family: ClassVar[str] = "mlp"  # model.family when the config names none
    # A served record can be scored alone with its true label: the operate loop's window
    # gate scores a challenger and the champion on the labelled served records.
    scores_served_records: ClassVar[bool] = True

    def metrics_for(self, data: Any) -> Mapping[str, Mode]:
        """The metrics a run on the data section (a DataConfig) reports: :attr:`metrics`,
        unless their names depend on the config (a recommender's cut-off k)."""
        return self.metrics

    def default_metric_for(self, data: Any) -> str:
        return self.default_metric

    def shown_metric_for(self, data: Any) -> str:
        return self.shown_metric

    def label_error(self, label: str, label_type: str) -> str | None:
        """Why ``label`` of ``label_type`` cannot be this task's label, or None."""
        if label_type in self.label_types:
            return None
        return f"task {self.name!r} needs a {self.label_kinds} label; {label!r} is {label_type!r}"

    def unmonitored(self, data: Any) -> set[str]:
        """Feature columns the drift monitor leaves out (a DataConfig's): served values that
        are not meant to follow the training data's distribution."""
        return set()

    def served_records(self, records: Any) -> Any:
        """Served records (a DataFrame of the prediction log's window, the answer in
        ``prediction``) as the drift monitor compares them with the training profile: one
        row per record, or for a task whose answer is a list, one per answered item."""
        return records

    def data_error(self, data: Any) -> str | None:
        """What the data section (a DataConfig) lacks or has too much of for this task,
        or None."""
        for section, task in (("forecast", "forecasting"), ("recommend", "recommendation")):
            if getattr(data, section, None) is not None and task != self.name:
                return f"data.{section} applies to data.task {task!r}, not {self.name!r}"
        return None

    # ---------------------------------------------------------------- labels

    @abstractmethod
    def fit_label(self, label: str, entry: Mapping[str, Any]) -> dict[str, Any]:
        """The label's fitted state from its merged training statistics."""

    @abstractmethod
    def encode_label(self, state: Mapping[str, Any], labels: pa.ChunkedArray) -> np.ndarray:
        """Labels as a model learns them (class index, -1 for an unseen class; or the
        standardized value)."""

    def targets(self, state: Mapping[str, Any], table: pa.Table, label: str) -> np.ndarray:
        """What the loops and the metrics read of labelled rows: the encoded label, and for
        a task whose metrics need more of each row (a forecast's scale), more columns."""
        return self.encode_label(state, table.column(label))

    def learned(self, targets: np.ndarray) -> np.ndarray:
        """The part of :meth:`targets` a model fits (a tree library takes it as its label)."""
        return targets

    @abstractmethod
    def n_outputs(self, state: Mapping[str, Any]) -> int:
        """Width of a model's output."""

    def known(self, encoded: np.ndarray) -> np.ndarray:
        """The rows a model can be scored on (a class unseen in training cannot), from
        :meth:`targets`."""
        return np.ones(len(encoded), dtype=bool)

    # ---------------------------------------------------------------- metrics

    @abstractmethod
    def sufficient_stats(
        self, outputs: np.ndarray, encoded: np.ndarray, state: Mapping[str, Any]
    ) -> np.ndarray:
        """Float64 statistics of a shard that sum across workers to the whole set's."""

    @abstractmethod
    def metrics_of(self, stats: np.ndarray, state: Mapping[str, Any]) -> dict[str, float]:
        """``valid_*`` metrics from statistics summed over every shard."""

    @abstractmethod
    def score(
        self,
        outputs: np.ndarray,
        encoded: np.ndarray,
        state: Mapping[str, Any],
        classes: list[str] | None = None,
    ) -> Scored:
        """Metrics of outputs against encoded labels on one machine (``classes``: count
        over these, a superset of the model's, so models that know other classes are
        measured alike)."""

    # ---------------------------------------------------------------- serving

    @abstractmethod
    def answers(self, outputs: np.ndarray, state: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One response body per record (``prediction``, and what else the task gives)."""

    @abstractmethod
    def true_label(self, value: Any) -> Any:
        """A true label as the task reads it, or None when it cannot be one."""

    @abstractmethod
    def live_metrics(
        self, predicted: list[Any], actual: list[Any], declared: list[str] | None
    ) -> dict[str, float]:
        """``live_*`` metrics of served answers against true labels."""

    @abstractmethod
    def agree(self, shadow: Any, champion: Any, tolerance: float) -> bool:
        """Whether two models' answers to one record agree."""

    # ---------------------------------------------------------------- PyTorch

    @abstractmethod
    def torch_loss(self) -> Any:
        """The loss a network of this task minimises (on its raw outputs)."""

    @abstractmethod
    def torch_label_dtype(self) -> Any:
        """The torch dtype of encoded labels."""
