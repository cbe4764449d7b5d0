"""The fitted transform from validated columns to the model's float matrix, and back.

Fitting is split in two so it scales: :func:`batch_stats` runs on each block in parallel and
:func:`fit` merges the partial statistics on the driver. The fitted :class:`Preprocessor`
is plain JSON, saved with the curated dataset and with the model, so serving applies exactly
the transform that training saw, and loading it never unpickles anything.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from rayops.config import DataConfig
from rayops.errors import DataError

OTHER = "__other__"
MAX_CATEGORIES = 64  # rarer categories share the OTHER slot: keeps the input layer small


def label_strings(labels: pd.Series) -> pd.Series:
    """Class labels as text; integral numbers print without a trailing '.0'."""
    if pd.api.types.is_float_dtype(labels):
        values = labels.dropna()
        if bool((values == values.round()).all()):
            labels = labels.astype("Int64")
    text = [None if pd.isna(v) else str(v) for v in labels.astype(object)]
    return pd.Series(text, index=labels.index, dtype=object)


def batch_stats(frame: pd.DataFrame, data: DataConfig) -> dict[str, Any]:
    """Mergeable statistics of one batch of validated, good training rows."""
    stats: dict[str, Any] = {"rows": len(frame), "features": {}, "label": {}}
    for name in [*data.feature_names, data.label]:
        spec = data.columns[name]
        col = frame[name]
        if spec.type == "categorical" or (name == data.label and data.task == "classification"):
            text = label_strings(col) if name == data.label else col
            counts = text.dropna().astype(str).value_counts()
            entry: dict[str, Any] = {"counts": {str(k): int(v) for k, v in counts.items()}}
        else:
            values = col.dropna().to_numpy(dtype="float64")
            entry = {"n": int(values.size), "sum": float(values.sum()),
                     "sumsq": float(np.square(values).sum())}
        stats["label" if name == data.label else "features"][name] = entry
    return stats


def merge_stats(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Combine :func:`batch_stats` results (order does not matter)."""
    merged: dict[str, Any] = {"rows": 0, "features": {}, "label": {}}
    for part in parts:
        merged["rows"] += part["rows"]
        for group in ("features", "label"):
            for name, entry in part[group].items():
                target = merged[group].setdefault(name, {})
                if "counts" in entry:
                    counts = Counter(target.get("counts", {}))
                    counts.update(entry["counts"])
                    target["counts"] = dict(counts)
                else:
                    for key in ("n", "sum", "sumsq"):
                        target[key] = target.get(key, 0) + entry[key]
    return merged


def _mean_std(entry: Mapping[str, float]) -> tuple[float, float]:
    n = entry.get("n", 0)
    if n == 0:
        return 0.0, 1.0
    mean = entry["sum"] / n
    var = max(entry["sumsq"] / n - mean * mean, 0.0)
    std = float(np.sqrt(var))
    return float(mean), std if std > 1e-12 else 1.0


@dataclass(frozen=True)
class Preprocessor:
    """Fitted state: how each feature becomes columns of the input matrix."""

    task: str
    label: str
    features: list[dict[str, Any]]
    label_state: dict[str, Any]
    output_columns: list[str] = field(default_factory=list)

    @property
    def n_features(self) -> int:
        return len(self.output_columns)

    @property
    def n_outputs(self) -> int:
        return len(self.label_state["classes"]) if self.task == "classification" else 1

    @property
    def classes(self) -> list[str]:
        return list(self.label_state.get("classes", []))

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "label": self.label, "features": self.features,
                "label_state": self.label_state, "output_columns": self.output_columns}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> Preprocessor:
        return cls(task=state["task"], label=state["label"], features=list(state["features"]),
                   label_state=dict(state["label_state"]),
                   output_columns=list(state["output_columns"]))

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Validated feature columns -> float32 matrix (nulls imputed, unknowns to OTHER)."""
        blocks: list[np.ndarray] = []
        for feat in self.features:
            col = frame[feat["name"]]
            if feat["kind"] == "categorical":
                cats = feat["categories"]
                index = pd.Categorical(col.astype(object), categories=cats).codes
                index = np.where(index < 0, len(cats), index)  # unseen or null -> OTHER
                onehot = np.zeros((len(col), len(cats) + 1), dtype=np.float32)
                onehot[np.arange(len(col)), index] = 1.0
                blocks.append(onehot)
            else:
                values = col.to_numpy(dtype="float64", na_value=np.nan)
                scaled = (values - feat["mean"]) / feat["std"]
                blocks.append(np.nan_to_num(scaled, nan=0.0).astype(np.float32)[:, None])
        if not blocks:
            return np.zeros((len(frame), 0), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(blocks, axis=1))

    def encode_label(self, labels: pd.Series) -> np.ndarray:
        """Class index (int64, -1 for a class unseen in training) or standardized target."""
        if self.task == "classification":
            codes = pd.Categorical(label_strings(labels), categories=self.classes).codes
            return codes.astype(np.int64)
        values = labels.to_numpy(dtype="float64")
        return ((values - self.label_state["mean"]) / self.label_state["std"]).astype(np.float32)

    def decode_regression(self, outputs: np.ndarray) -> np.ndarray:
        return outputs * self.label_state["std"] + self.label_state["mean"]


def fit(stats: Mapping[str, Any], data: DataConfig) -> Preprocessor:
    """Build the :class:`Preprocessor` from merged training statistics."""
    if stats["rows"] == 0:
        raise DataError("no valid training rows to fit the preprocessing on")
    features: list[dict[str, Any]] = []
    output: list[str] = []
    for name in data.feature_names:
        spec = data.columns[name]
        entry = stats["features"][name]
        if spec.type == "categorical":
            ranked = sorted(entry.get("counts", {}).items(), key=lambda kv: (-kv[1], kv[0]))
            cats = sorted(k for k, _ in ranked[:MAX_CATEGORIES])
            features.append({"name": name, "kind": "categorical", "categories": cats})
            output += [f"{name}={c}" for c in cats] + [f"{name}={OTHER}"]
        else:
            mean, std = _mean_std(entry)
            features.append({"name": name, "kind": spec.type, "mean": mean, "std": std})
            output.append(name)
    label_entry = stats["label"][data.label]
    if data.task == "classification":
        classes = sorted(label_entry.get("counts", {}))
        if len(classes) < 2:
            raise DataError(
                f"label {data.label!r} has {len(classes)} class(es) in the training data "
                f"({classes}); classification needs at least 2"
            )
        label_state: dict[str, Any] = {"classes": classes, "counts": label_entry["counts"]}
    else:
        mean, std = _mean_std(label_entry)
        label_state = {"mean": mean, "std": std}
    return Preprocessor(data.task, data.label, features, label_state, output)
