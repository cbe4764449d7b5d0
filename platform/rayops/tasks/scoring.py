"""Metrics computed from sufficient statistics (what every task's metrics are made of).

Each worker turns its validation shard into small count/sum arrays; the arrays are summed
across workers (all-reduce) and only then turned into metrics, so F1 and R^2 are exact for
the whole validation set, not averages of per-worker values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:  # pandas costs a command that only reads a config 0.4 s to import
    import pandas as pd


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


def mean_std(entry: Mapping[str, Any]) -> tuple[float, float]:
    """Mean and population standard deviation of a column's merged statistics (``n``,
    ``sum``, ``sumsq``); 1.0 where there is no spread."""
    n = entry.get("n", 0)
    if n == 0:
        return 0.0, 1.0
    mean = entry["sum"] / n
    std = float(np.sqrt(max(entry["sumsq"] / n - mean * mean, 0.0)))
    return float(mean), std if std > 1e-12 else 1.0


def label_strings(labels: pa.ChunkedArray | pa.Array | pd.Series) -> pa.ChunkedArray:
    """Class labels as text; integral numbers print without a trailing '.0'."""
    if not isinstance(labels, pa.Array | pa.ChunkedArray):  # a pandas Series
        labels = pa.chunked_array([pa.array(labels, from_pandas=True)])
    if isinstance(labels, pa.Array):
        labels = pa.chunked_array([labels])
    if pa.types.is_floating(labels.type):
        valid = labels.drop_null()
        if len(valid) == 0 or pc.all(pc.equal(valid, pc.floor(valid))).as_py():
            labels = pc.cast(labels, pa.int64())
    return pc.cast(labels, pa.string())
