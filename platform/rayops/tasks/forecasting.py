"""The forecasting task: future values of one or many series, a step at a time.

A forecasting model learns from examples built per series (:mod:`rayops.data.series`): one
row per forecast origin and step, its features computed from data up to the origin only,
its label the value at the step divided by the series' level. Models give the quantiles
:data:`QUANTILES` (the median is the forecast) and learn them with the pinball loss.

Every labelled example also carries what the metrics need (:meth:`Forecasting.targets`):
the series' level, the seasonal-naive forecast of the same step and the series' in-sample
seasonal-naive MAE, the denominator of MASE as Hyndman defines it. The seasonal-naive
forecast is always scored beside the model (``valid_naive_mae``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from rayops.tasks.base import LOSSES, Scored, Task
from rayops.tasks.tabular import Regression

# Every forecast gives these quantiles: fixed, so the metrics that measure them have names.
QUANTILES = (0.1, 0.5, 0.9)
MEDIAN = QUANTILES.index(0.5)
# The columns an example carries beside its features and label (never model inputs).
LEVEL, NAIVE, SCALE = "_level", "_naive", "_mase_scale"
# Sufficient statistics, in this order: summed over shards, then turned into metrics.
_STATS = (
    "n",
    "abs",
    "sq",
    "smape",
    "n_mase",
    "scaled_abs",
    "naive_abs",
    "inside",
    "below_lo",
    "below_mid",
    "below_hi",
    "pinball",
)
# Reported for reading, never ranked: how often the actual value fell inside / below.
COVERAGE = ("valid_coverage_80", "valid_below_p10", "valid_below_p50", "valid_below_p90")


def sorted_quantiles(outputs: np.ndarray) -> np.ndarray:
    """Outputs as quantiles in increasing order (a model may cross them)."""
    return np.sort(outputs.reshape(len(outputs), len(QUANTILES)), axis=1)


def pinball(quantiles: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Per row, the mean pinball loss over :data:`QUANTILES`."""
    levels = np.asarray(QUANTILES)
    diff = actual[:, None] - quantiles
    return np.maximum(levels * diff, (levels - 1) * diff).mean(axis=1)


def forecast_sums(
    quantiles: np.ndarray, actual: np.ndarray, naive: np.ndarray, scale: np.ndarray
) -> np.ndarray:
    """The statistics of :data:`_STATS` for forecasts in the series' own units."""
    point = quantiles[:, MEDIAN]
    err = np.abs(point - actual)
    denominator = np.abs(actual) + np.abs(point)
    smape = np.divide(200.0 * err, denominator, out=np.zeros_like(err), where=denominator > 0)
    has_scale = scale > 0
    return np.array(
        [
            len(actual),
            err.sum(),
            np.square(err).sum(),
            smape.sum(),
            has_scale.sum(),
            (err[has_scale] / scale[has_scale]).sum(),
            np.abs(naive - actual).sum(),
            ((actual >= quantiles[:, 0]) & (actual <= quantiles[:, -1])).sum(),
            (actual < quantiles[:, 0]).sum(),
            (actual < quantiles[:, MEDIAN]).sum(),
            (actual < quantiles[:, -1]).sum(),
            pinball(quantiles, actual).sum(),
        ],
        dtype=np.float64,
    )


def forecast_metrics(sums: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, sMAPE (percent), MASE, the seasonal-naive MAE, the mean pinball loss and
    the coverage of the quantiles, from :func:`forecast_sums` summed over shards."""
    s = dict(zip(_STATS, (float(v) for v in sums), strict=True))
    n = s["n"]
    if n == 0:
        return {m: float("nan") for m in (*Forecasting.metrics, *COVERAGE) if m not in LOSSES}
    return {
        "valid_mae": s["abs"] / n,
        "valid_rmse": float(np.sqrt(s["sq"] / n)),
        "valid_smape": s["smape"] / n,
        "valid_mase": s["scaled_abs"] / s["n_mase"] if s["n_mase"] else float("nan"),
        "valid_naive_mae": s["naive_abs"] / n,
        "valid_pinball": s["pinball"] / n,
        "valid_coverage_80": s["inside"] / n,
        "valid_below_p10": s["below_lo"] / n,
        "valid_below_p50": s["below_mid"] / n,
        "valid_below_p90": s["below_hi"] / n,
    }


class Forecasting(Task):
    """Future values of series; the model gives P10, P50 and P90 of each step."""

    name = "forecasting"
    metrics = {
        "valid_mae": "min",
        "valid_rmse": "min",
        "valid_smape": "min",
        "valid_mase": "min",
        "valid_naive_mae": "min",
        "valid_pinball": "min",
        **LOSSES,
    }
    default_metric = "valid_mae"
    shown_metric = "valid_mase"
    label_types = ("numeric", "integer")
    label_kinds = "numeric or integer"
    categorical_label = False
    probabilities = False
    feedback_label = Annotated[float, Field(strict=True, allow_inf_nan=False)]
    # A step needs its series' history to be forecast: the gate scores a challenger on the
    # validation period instead, which holds the newest actuals once they are ingested.
    scores_served_records = False
    route = "/forecast"

    def unmonitored(self, data: Any) -> set[str]:
        """The timestamp: a forecast's steps always lie after the training data."""
        return {data.forecast.timestamp}

    def data_error(self, data: Any) -> str | None:
        f = data.forecast
        if f is None:
            return (
                "data.task 'forecasting' needs a data.forecast section (at least "
                "timestamp: the timestamp column)"
            )
        declared, used = data.columns, set(data.feature_names)
        roles = {
            "timestamp": [f.timestamp],
            "series": f.series,
            "known_in_advance": f.known_in_advance,
        }
        for key, names in roles.items():
            for name in names:
                if name not in declared or name == data.label:
                    return (
                        f"data.forecast.{key} {name!r} is not a declared column other "
                        f"than the label; declared: {sorted(declared)}"
                    )
                if name not in used:
                    return f"data.forecast.{key} {name!r} is excluded from the features"
        for key, names, types in (
            ("timestamp", [f.timestamp], ("datetime",)),
            ("series", f.series, ("categorical", "text", "integer")),
        ):
            for name in names:
                spec = declared[name]
                if spec.type not in types or spec.nullable:
                    return (
                        f"data.forecast.{key} {name!r} must be declared "
                        f"{' or '.join(types)} with nullable: false (it is "
                        f"{spec.type}, nullable: {str(spec.nullable).lower()})"
                    )
        listed = {n for names in roles.values() for n in names}
        if len(listed) < sum(len(n) for n in roles.values()):
            return "a column has two roles in data.forecast (timestamp, series, known_in_advance)"
        other = sorted(used - listed)
        if other:
            return (
                f"column(s) {other} are neither data.forecast.timestamp, series nor "
                "known_in_advance: a forecast cannot read them at future steps. List "
                "them under known_in_advance if they are known ahead, or under "
                "data.exclude"
            )
        return None

    def fit_label(self, label: str, entry: Mapping[str, Any]) -> dict[str, Any]:
        return {"quantiles": list(QUANTILES)}

    def encode_label(self, state: Mapping[str, Any], labels: pa.ChunkedArray) -> np.ndarray:
        """The label as examples carry it: already divided by the series' level."""
        return pc.cast(labels, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float32)

    def targets(self, state: Mapping[str, Any], table: pa.Table, label: str) -> np.ndarray:
        """``[label / level, level, seasonal naive / level, MASE scale]`` per example."""
        columns = [self.encode_label(state, table.column(label))]
        columns += [self.encode_label(state, table.column(c)) for c in (LEVEL, NAIVE, SCALE)]
        return np.stack(columns, axis=1) if len(columns[0]) else np.zeros((0, 4), np.float32)

    def learned(self, targets: np.ndarray) -> np.ndarray:
        return targets.reshape(-1, 4)[:, 0]

    def known(self, encoded: np.ndarray) -> np.ndarray:
        return np.isfinite(encoded.reshape(-1, 4)[:, 0])

    def n_outputs(self, state: Mapping[str, Any]) -> int:
        return len(QUANTILES)

    def _in_units(
        self, outputs: np.ndarray, encoded: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        encoded = encoded.reshape(-1, 4).astype(np.float64)
        level = encoded[:, 1]
        quantiles = sorted_quantiles(outputs.astype(np.float64)) * level[:, None]
        return quantiles, encoded[:, 0] * level, encoded[:, 2] * level, encoded[:, 3]

    def sufficient_stats(
        self, outputs: np.ndarray, encoded: np.ndarray, state: Mapping[str, Any]
    ) -> np.ndarray:
        return forecast_sums(*self._in_units(outputs, encoded))

    def metrics_of(self, stats: np.ndarray, state: Mapping[str, Any]) -> dict[str, float]:
        return forecast_metrics(stats)

    def score(
        self,
        outputs: np.ndarray,
        encoded: np.ndarray,
        state: Mapping[str, Any],
        classes: list[str] | None = None,
    ) -> Scored:
        quantiles, actual, naive, scale = self._in_units(outputs, encoded)
        metrics = forecast_metrics(forecast_sums(quantiles, actual, naive, scale))
        return Scored(metrics, actual, quantiles[:, MEDIAN], [])

    def answers(self, outputs: np.ndarray, state: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Per step, from quantiles already in the series' units: the forecast (the
        median) and every quantile."""
        return [
            {
                "value": round(float(row[MEDIAN]), 6),
                "quantiles": {
                    f"{q:g}": round(float(v), 6) for q, v in zip(QUANTILES, row, strict=True)
                },
            }
            for row in sorted_quantiles(outputs)
        ]

    # a forecast's served value is a number, judged like a regression's
    true_label = Regression.true_label
    live_metrics = Regression.live_metrics
    agree = Regression.agree

    def torch_loss(self) -> Any:
        from rayops.tasks.pinball import PinballLoss

        return PinballLoss(QUANTILES)

    def torch_label_dtype(self) -> Any:
        import torch

        return torch.float32
