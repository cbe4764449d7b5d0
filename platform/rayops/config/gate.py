"""The gate section: when a new model (the challenger) may replace the champion."""

from __future__ import annotations

from pydantic import Field, field_validator

from rayops.config.base import _Section


class GateConfig(_Section):
    """Thresholds in the spirit of MLflow's ``MetricThreshold``: the challenger must beat
    the champion on ``metric`` by at least the absolute and relative margins, and may not
    worsen any metric in ``max_regression`` by more than its allowance. Both models are
    scored on the same validation rows at gate time."""

    metric: str | None = Field(
        None,
        description="Metric the challenger must improve; default: the target metric "
        "(tune.metric, else valid_f1 for classification, valid_rmse for regression).",
    )
    min_improvement: float = Field(
        0.0,
        ge=0.0,
        description="Smallest absolute improvement over the champion, in the "
        "metric's units (0: any strict improvement).",
    )
    min_relative_improvement: float = Field(
        0.0,
        ge=0.0,
        description="Smallest improvement as a fraction of the champion's "
        "value (0.01: one percent better).",
    )
    max_regression: dict[str, float] = Field(
        default_factory=dict,
        description="Other metrics the challenger may not worsen by "
        "more than this absolute amount, e.g. {valid_recall: 0.02}.",
    )

    @field_validator("max_regression")
    @classmethod
    def _allowances(cls, v: dict[str, float]) -> dict[str, float]:
        negative = {k: a for k, a in v.items() if a < 0}
        if negative:
            raise ValueError(f"allowances must be >= 0; got {negative}")
        return v
