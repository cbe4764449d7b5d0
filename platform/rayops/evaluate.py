"""Score a model bundle on curated rows, and the plots logged with every trained model.

Used to compare a challenger with the champion on the same validation data (each model
applies its own fitted preprocessing to the same typed rows), and to draw the confusion
matrix or predicted-vs-actual plot of a new model.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from rayops import tracking
from rayops.config import PipelineConfig
from rayops.data.versions import DatasetVersion
from rayops.models import Bundle
from rayops.predict import Predictor
from rayops.tasks import Scored
from rayops.tasks import scoring as metric_fns

logger = logging.getLogger(__name__)


def score(predictor: Predictor, table: pa.Table, classes: list[str] | None = None) -> Scored:
    """Metrics of ``predictor`` on typed rows that carry the label. ``classes`` (a superset
    of the model's, for a classifier): count over these, so that two models that know
    other classes are measured alike (same classes, same binary or macro average)."""
    pre = predictor.preprocessor
    table = pre.examples(table, "valid")
    label = pre.targets(table)
    keep = pre.rules.known(label)
    outputs = predictor.outputs(pre.transform(table.filter(pa.array(keep))))
    return pre.rules.score(outputs, label[keep], pre.label_state, classes)


def _figures(scores: Scored, history: dict[str, list[tuple[int, float]]]) -> dict[str, Any]:
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
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center")
        ax.set(
            xticks=range(n),
            yticks=range(n),
            xticklabels=scores.classes,
            yticklabels=scores.classes,
            xlabel="predicted",
            ylabel="actual",
            title="Confusion matrix (validation)",
        )
        figures["plots/confusion_matrix.png"] = fig
    elif len(scores.actual):  # a recommender's ranks have no predicted-vs-actual
        ax.scatter(scores.actual, scores.predicted, s=4, alpha=0.4)
        low, high = float(np.min(scores.actual)), float(np.max(scores.actual))
        ax.plot([low, high], [low, high], color="black", linewidth=1)
        ax.set(xlabel="actual", ylabel="predicted", title="Predicted vs actual (validation)")
        figures["plots/predicted_vs_actual.png"] = fig
    else:
        plt.close(fig)
    return figures


def log_plots(cfg: PipelineConfig, run_id: str, bundle: Bundle, version: DatasetVersion) -> None:
    """Loss curves and the confusion matrix / predicted-vs-actual plot, as run artifacts."""
    import matplotlib.pyplot as plt

    history = tracking.metric_history(cfg.tracking, run_id, ("train_loss", "valid_loss"))
    scores = score(Predictor(bundle), version.scored_rows())
    for name, figure in _figures(scores, history).items():
        tracking.log_figure(cfg.tracking, run_id, figure, name)
        plt.close(figure)
