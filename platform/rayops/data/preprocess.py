"""The fitted transform from validated columns to the model's float matrix, and back.

Fitted from merged :mod:`rayops.data.stats` of the training split, so it scales and can be
refitted when new data arrives without re-reading old data. The fitted
:class:`Preprocessor` is plain JSON, saved with the curated dataset version and with every
model, so serving applies exactly the transform training saw; loading it unpickles nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayops.config import DataConfig
from rayops.data.schema import label_strings
from rayops.data.stats import calendar, mean_std
from rayops.errors import DataError

OTHER = "__other__"
MAX_CATEGORIES = 64  # rarer categories share the OTHER slot: keeps the input layer small
CLIP = 1e4  # largest standardized magnitude fed to the network


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

    def transform(self, table: pa.Table) -> np.ndarray:
        """Validated feature columns -> float32 matrix (nulls imputed, unknowns to OTHER)."""
        blocks: list[np.ndarray] = []
        for feat in self.features:
            col = table.column(feat["name"])
            if feat["kind"] in ("categorical", "text"):
                cats = feat["categories"]
                vocabulary = pa.array(cats, pa.string())
                index = pc.index_in(pc.cast(col, pa.string()), value_set=vocabulary)
                codes = index.fill_null(len(cats)).to_numpy(zero_copy_only=False)
                onehot = np.zeros((len(codes), len(cats) + 1), dtype=np.float32)
                onehot[np.arange(len(codes)), codes] = 1.0
                blocks.append(onehot)
            elif feat["kind"] == "datetime":
                for part in feat["parts"]:
                    blocks.append(_scaled(calendar(col, part["part"]), part))
            else:
                blocks.append(_scaled(pc.cast(col, pa.float64()), feat))
        if not blocks:
            return np.zeros((table.num_rows, 0), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(blocks, axis=1))

    def encode_label(self, labels: pa.ChunkedArray) -> np.ndarray:
        """Class index (int64, -1 for a class unseen in training) or standardized target."""
        if self.task == "classification":
            index = pc.index_in(label_strings(labels), value_set=pa.array(self.classes))
            return index.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        values = pc.cast(labels, pa.float64()).to_numpy(zero_copy_only=False)
        return ((values - self.label_state["mean"]) / self.label_state["std"]).astype(np.float32)

    def decode_regression(self, outputs: np.ndarray) -> np.ndarray:
        return outputs * self.label_state["std"] + self.label_state["mean"]


def _scaled(values: pa.ChunkedArray, state: Mapping[str, float]) -> np.ndarray:
    raw = values.to_numpy(zero_copy_only=False).astype(np.float64)
    scaled = (raw - state["mean"]) / state["std"]
    # Nulls become the mean (0). A value 10,000 spreads out is an outlier the model cannot
    # use anyway; clipping keeps float32 and the network's outputs finite.
    scaled = np.clip(np.nan_to_num(scaled, nan=0.0), -CLIP, CLIP)
    return scaled.astype(np.float32)[:, None]


def _scale_state(stats: Mapping[str, Any], key: str) -> dict[str, float]:
    mean, std = mean_std(stats.get(key, {}))
    return {"mean": mean, "std": std}


def fit(stats: Mapping[str, Any], data: DataConfig) -> Preprocessor:
    """Build the :class:`Preprocessor` from merged training-split statistics."""
    label_entry = stats.get(data.label, {})
    if not label_entry.get("n"):
        raise DataError("no valid training rows to fit the preprocessing on")
    features: list[dict[str, Any]] = []
    output: list[str] = []
    for name in data.feature_names:
        spec = data.columns[name]
        if spec.type in ("categorical", "text"):
            counts = stats.get(name, {}).get("counts", {})
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            cats = sorted(k for k, _ in ranked[:MAX_CATEGORIES])
            features.append({"name": name, "kind": spec.type, "categories": cats})
            output += [f"{name}={c}" for c in cats] + [f"{name}={OTHER}"]
        elif spec.type == "datetime":
            parts = [{"part": p, **_scale_state(stats, f"{name}.{p}")} for p in spec.parts]
            features.append({"name": name, "kind": "datetime", "parts": parts})
            output += [f"{name}.{p}" for p in spec.parts]
        else:
            features.append({"name": name, "kind": spec.type, **_scale_state(stats, name)})
            output.append(name)
    if data.task == "classification":
        classes = sorted(label_entry.get("counts", {}))
        if len(classes) < 2:
            raise DataError(
                f"label {data.label!r} has {len(classes)} class(es) in the training data "
                f"({classes}); classification needs at least 2"
            )
        label_state: dict[str, Any] = {"classes": classes, "counts": label_entry["counts"]}
    else:
        label_state = _scale_state(stats, data.label)
    return Preprocessor(data.task, data.label, features, label_state, output)
