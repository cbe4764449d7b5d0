"""Validation metrics computed from sufficient statistics.

Each worker turns its validation shard into small count/sum arrays; the arrays are summed
across workers (all-reduce) and only then turned into metrics, so F1 and R^2 are exact for
the whole validation set, not averages of per-worker values.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Mode = Literal["min", "max"]

# Every metric a training run reports per epoch, by task, with the direction that is better.
# Config keys that name a metric (tune.metric, gate.metric, gate.max_regression) are checked
# against this table when the config loads.
_COMMON: dict[str, Mode] = {"valid_loss": "min", "train_loss": "min"}
TASK_METRICS: dict[str, dict[str, Mode]] = {
    "classification": {"valid_accuracy": "max", "valid_precision": "max",
                       "valid_recall": "max", "valid_f1": "max", **_COMMON},
    "regression": {"valid_rmse": "min", "valid_mae": "min", "valid_r2": "max", **_COMMON},
}


def confusion_matrix(predicted: np.ndarray, actual: np.ndarray, n_classes: int) -> np.ndarray:
    """``[actual, predicted]`` counts as float64 (so it can be all-reduced as is)."""
    counts = np.zeros((n_classes, n_classes), dtype=np.float64)
    np.add.at(counts, (actual.astype(np.int64), predicted.astype(np.int64)), 1.0)
    return counts


def classification_metrics(confusion: np.ndarray) -> dict[str, float]:
    """Accuracy, precision, recall and F1.

    Binary tasks report the positive class (the second class in sorted order, e.g. "yes" of
    ["no", "yes"]); multiclass tasks report the macro average over classes.
    """
    total = confusion.sum()
    tp = np.diag(confusion)
    predicted = confusion.sum(axis=0)
    actual = confusion.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    pick = (lambda a: float(a[1])) if len(confusion) == 2 else (lambda a: float(a.mean()))
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "precision": pick(precision),
        "recall": pick(recall),
        "f1": pick(f1),
    }


def regression_sums(predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """``[n, sum sq err, sum abs err, sum y, sum y^2]`` in the label's own units."""
    err = predicted.astype(np.float64) - actual.astype(np.float64)
    y = actual.astype(np.float64)
    return np.array([y.size, np.square(err).sum(), np.abs(err).sum(), y.sum(), np.square(y).sum()])


def regression_metrics(sums: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R^2 from :func:`regression_sums` (summed over shards)."""
    n, sse, sae, sy, syy = (float(v) for v in sums)
    if n == 0:
        return {"rmse": float("nan"), "mae": float("nan"), "r2": float("nan")}
    sst = syy - sy * sy / n
    return {
        "rmse": float(np.sqrt(sse / n)),
        "mae": sae / n,
        "r2": 1.0 - sse / sst if sst > 0 else 0.0,
    }
