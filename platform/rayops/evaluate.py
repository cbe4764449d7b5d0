"""Score a model bundle on curated rows, and the plots logged with every trained model.

Used to compare a challenger with the champion on the same validation data (each model
applies its own fitted preprocessing to the same typed rows), and to draw the confusion
matrix or predicted-vs-actual plot of a new model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from rayops import metrics as metric_fns
from rayops import tracking
from rayops.config import PipelineConfig
from rayops.data.versions import DatasetVersion
from rayops.models import Bundle
from rayops.predict import Predictor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scores:
    """Validation metrics (named as in training: ``valid_f1``...) and the raw outputs."""

    metrics: dict[str, float]
    actual: np.ndarray
    predicted: np.ndarray
    classes: list[str]


def score(predictor: Predictor, table: pa.Table, classes: list[str] | None = None) -> Scores:
    """Metrics of ``predictor`` on typed rows that carry the label. ``classes`` (a superset
    of the model's, for a classifier): count over these, so that two models that know
    other classes are measured alike (same classes, same binary or macro average)."""
    pre = predictor.preprocessor
    classes = classes or pre.classes
    label = pre.encode_label(table.column(pre.label))
    keep = label >= 0 if pre.task == "classification" else np.ones(len(label), dtype=bool)
    outputs = predictor.outputs(pre.transform(table.filter(pa.array(keep))))
    if pre.task == "classification":
        to_common = np.array([classes.index(c) for c in pre.classes], dtype=np.int64)
        predicted, actual = to_common[outputs.argmax(axis=1)], to_common[label[keep]]
        matrix = metric_fns.confusion_matrix(predicted, actual, len(classes))
        values = metric_fns.classification_metrics(matrix)
    else:
        predicted = pre.decode_regression(outputs[:, 0])
        actual = pre.decode_regression(label[keep])
        values = metric_fns.regression_metrics(metric_fns.regression_sums(predicted, actual))
    return Scores({f"valid_{k}": v for k, v in values.items()}, actual, predicted, classes)


def _figures(scores: Scores, history: dict[str, list[tuple[int, float]]]) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")  # no display: render to files
    import matplotlib.pyplot as plt

    figures: dict[str, Any] = {}
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("train_loss", "valid_loss"):
        if history.get(key):
            steps, values = zip(*history[key], strict=True)
            ax.plot(steps, values, marker="o", label=key)
    ax.set(xlabel="epoch", ylabel="loss", title="Learning curves")
    ax.legend()
    figures["plots/loss_curves.png"] = fig
    fig, ax = plt.subplots(figsize=(5, 5))
    if scores.classes:
        n = len(scores.classes)
        matrix = metric_fns.confusion_matrix(scores.predicted, scores.actual, n)
        ax.imshow(matrix, cmap="Blues")
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center")
        ax.set(xticks=range(n), yticks=range(n), xticklabels=scores.classes,
               yticklabels=scores.classes, xlabel="predicted", ylabel="actual",
               title="Confusion matrix (validation)")
        figures["plots/confusion_matrix.png"] = fig
    else:
        ax.scatter(scores.actual, scores.predicted, s=4, alpha=0.4)
        low, high = float(np.min(scores.actual)), float(np.max(scores.actual))
        ax.plot([low, high], [low, high], color="black", linewidth=1)
        ax.set(xlabel="actual", ylabel="predicted", title="Predicted vs actual (validation)")
        figures["plots/predicted_vs_actual.png"] = fig
    return figures


def log_plots(cfg: PipelineConfig, run_id: str, bundle: Bundle, version: DatasetVersion) -> None:
    """Loss curves and the confusion matrix / predicted-vs-actual plot, as run artifacts."""
    import matplotlib.pyplot as plt

    client = tracking.client(cfg.tracking)
    history = {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
               for key in ("train_loss", "valid_loss")}
    scores = score(Predictor(bundle), version.table("valid"))
    for name, figure in _figures(scores, history).items():
        client.log_figure(run_id, figure, name)
        plt.close(figure)
