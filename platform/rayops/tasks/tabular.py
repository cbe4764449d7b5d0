"""The tabular tasks: classification and regression of independent rows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, StrictBool, StrictInt, StrictStr

from rayops.errors import DataError
from rayops.tasks import scoring
from rayops.tasks.base import LOSSES, Scored, Task


def _named(values: Mapping[str, float]) -> dict[str, float]:
    return {f"valid_{k}": v for k, v in values.items()}


class Classification(Task):
    """A class per row; the model gives a probability per class."""

    name = "classification"
    metrics = {
        "valid_accuracy": "max",
        "valid_precision": "max",
        "valid_recall": "max",
        "valid_f1": "max",
        **LOSSES,
    }
    default_metric = "valid_f1"
    shown_metric = "valid_accuracy"
    label_types = ("categorical", "text", "boolean", "integer")
    label_kinds = "categorical, boolean or integer"
    categorical_label = True
    probabilities = True
    feedback_label = (
        StrictStr | StrictBool | StrictInt | Annotated[float, Field(allow_inf_nan=False)]
    )

    def fit_label(self, label: str, entry: Mapping[str, Any]) -> dict[str, Any]:
        classes = sorted(entry.get("counts", {}))
        if len(classes) < 2:
            raise DataError(
                f"label {label!r} has {len(classes)} class(es) in the training "
                f"data ({classes}); classification needs at least 2"
            )
        return {"classes": classes, "counts": dict(entry["counts"])}

    def encode_label(self, state: Mapping[str, Any], labels: pa.ChunkedArray) -> np.ndarray:
        index = pc.index_in(scoring.label_strings(labels), value_set=pa.array(state["classes"]))
        return index.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)

    def n_outputs(self, state: Mapping[str, Any]) -> int:
        return len(state["classes"])

    def known(self, encoded: np.ndarray) -> np.ndarray:
        return encoded >= 0

    def sufficient_stats(
        self, outputs: np.ndarray, encoded: np.ndarray, state: Mapping[str, Any]
    ) -> np.ndarray:
        n = self.n_outputs(state)
        predicted = outputs.reshape(len(encoded), n).argmax(axis=1)
        return scoring.confusion_matrix(predicted, encoded.astype(np.int64), n).ravel()

    def metrics_of(self, stats: np.ndarray, state: Mapping[str, Any]) -> dict[str, float]:
        n = self.n_outputs(state)
        return _named(scoring.classification_metrics(stats.reshape(n, n)))

    def score(
        self,
        outputs: np.ndarray,
        encoded: np.ndarray,
        state: Mapping[str, Any],
        classes: list[str] | None = None,
    ) -> Scored:
        classes = classes or list(state["classes"])
        to_common = np.array([classes.index(c) for c in state["classes"]], dtype=np.int64)
        predicted, actual = to_common[outputs.argmax(axis=1)], to_common[encoded]
        matrix = scoring.confusion_matrix(predicted, actual, len(classes))
        return Scored(_named(scoring.classification_metrics(matrix)), actual, predicted, classes)

    def answers(self, outputs: np.ndarray, state: Mapping[str, Any]) -> list[dict[str, Any]]:
        classes = state["classes"]
        return [
            {
                "prediction": classes[int(row.argmax())],
                "probabilities": {c: round(float(p), 6) for c, p in zip(classes, row, strict=True)},
            }
            for row in outputs
        ]

    def true_label(self, value: Any) -> Any:
        return None if value is None else str(value)

    def live_metrics(
        self, predicted: list[Any], actual: list[Any], declared: list[str] | None
    ) -> dict[str, float]:
        """``declared`` classes keep a binary task's positive class the one training used
        even when a window holds one class only."""
        classes = sorted({*(declared or []), *(str(v) for v in [*predicted, *actual])})
        index = {c: i for i, c in enumerate(classes)}
        confusion = scoring.confusion_matrix(
            np.array([index[str(p)] for p in predicted]),
            np.array([index[str(a)] for a in actual]),
            len(classes),
        )
        return {f"live_{k}": v for k, v in scoring.classification_metrics(confusion).items()}

    def agree(self, shadow: Any, champion: Any, tolerance: float) -> bool:
        return bool(shadow == champion)

    def torch_loss(self) -> Any:
        import torch

        return torch.nn.CrossEntropyLoss()

    def torch_label_dtype(self) -> Any:
        import torch

        return torch.int64


class Regression(Task):
    """A number per row; the model learns it standardized (training mean and std)."""

    name = "regression"
    metrics = {"valid_rmse": "min", "valid_mae": "min", "valid_r2": "max", **LOSSES}
    default_metric = "valid_rmse"
    shown_metric = "valid_r2"
    label_types = ("numeric", "integer")
    label_kinds = "numeric or integer"
    categorical_label = False
    probabilities = False
    feedback_label = Annotated[float, Field(strict=True, allow_inf_nan=False)]

    def fit_label(self, label: str, entry: Mapping[str, Any]) -> dict[str, Any]:
        mean, std = scoring.mean_std(entry)
        return {"mean": mean, "std": std}

    def encode_label(self, state: Mapping[str, Any], labels: pa.ChunkedArray) -> np.ndarray:
        values = pc.cast(labels, pa.float64()).to_numpy(zero_copy_only=False)
        return ((values - state["mean"]) / state["std"]).astype(np.float32)

    def decode(self, state: Mapping[str, Any], values: np.ndarray) -> np.ndarray:
        return values * state["std"] + state["mean"]

    def n_outputs(self, state: Mapping[str, Any]) -> int:
        return 1

    def sufficient_stats(
        self, outputs: np.ndarray, encoded: np.ndarray, state: Mapping[str, Any]
    ) -> np.ndarray:
        return scoring.regression_sums(
            self.decode(state, outputs.reshape(-1)), self.decode(state, encoded)
        )

    def metrics_of(self, stats: np.ndarray, state: Mapping[str, Any]) -> dict[str, float]:
        return _named(scoring.regression_metrics(stats))

    def score(
        self,
        outputs: np.ndarray,
        encoded: np.ndarray,
        state: Mapping[str, Any],
        classes: list[str] | None = None,
    ) -> Scored:
        predicted = self.decode(state, outputs[:, 0])
        actual = self.decode(state, encoded)
        values = scoring.regression_metrics(scoring.regression_sums(predicted, actual))
        return Scored(_named(values), actual, predicted, [])

    def answers(self, outputs: np.ndarray, state: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [{"prediction": float(v)} for v in self.decode(state, outputs[:, 0])]

    def true_label(self, value: Any) -> Any:
        """A finite number (not text, not a boolean)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value) if np.isfinite(value) else None

    def live_metrics(
        self, predicted: list[Any], actual: list[Any], declared: list[str] | None
    ) -> dict[str, float]:
        values = scoring.regression_metrics(
            scoring.regression_sums(
                np.asarray(predicted, dtype=np.float64), np.asarray(actual, dtype=np.float64)
            )
        )
        return {f"live_{k}": v for k, v in values.items()}

    def agree(self, shadow: Any, champion: Any, tolerance: float) -> bool:
        a, b = float(shadow), float(champion)
        return abs(a - b) <= tolerance * max(abs(b), 1e-9)

    def torch_loss(self) -> Any:
        import torch

        return torch.nn.MSELoss()

    def torch_label_dtype(self) -> Any:
        import torch

        return torch.float32
