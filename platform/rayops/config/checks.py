"""The checks section: behavioural tests a model must pass before it ships (minimum
functionality, invariance, directional), metric floors on slices of the validation rows,
and the data version's own thresholds. ``rayops check`` runs them; the gate refuses a
challenger that fails one."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from rayops.config.base import _Section


class MinimumCheck(_Section):
    """Records and the answer each must get."""

    name: str = Field(description="What the check shows, in words (reports name it).")
    records: list[dict[str, Any]] = Field(
        min_length=1,
        description="Feature values of each record (as a request sends them); "
        "forecasting: a series' observations (with the label: history; without: the steps "
        "to forecast); recommendation: a user's interactions.",
    )
    expect_class: str | None = Field(
        None, description="Classification: the class every record must be predicted."
    )
    expect_min: float | None = Field(
        None,
        description="The lowest prediction allowed: the value (regression, each "
        "forecast step), or the probability of `of_class` (classification).",
    )
    expect_max: float | None = Field(None, description="The highest (see expect_min).")
    of_class: str | None = Field(
        None,
        description="Classification with expect_min/expect_max: the class whose "
        "probability they bound.",
    )
    expect_in_top_k: str | None = Field(
        None,
        description="Recommendation: an item each of the records' users must find in "
        "their top `k` (records: the user's interactions).",
    )
    k: int = Field(10, ge=1, description="Recommendation: how many items are asked for.")

    @model_validator(mode="after")
    def _something_expected(self) -> MinimumCheck:
        if (
            self.expect_class is None
            and self.expect_min is None
            and self.expect_max is None
            and self.expect_in_top_k is None
        ):
            raise ValueError(
                f"check {self.name!r} expects nothing: set expect_class, "
                "expect_min/expect_max or expect_in_top_k"
            )
        return self


class InvarianceCheck(_Section):
    """A perturbation of named columns that must not move predictions."""

    name: str = Field(description="What the check shows, in words.")
    columns: list[str] = Field(
        min_length=1,
        description="The columns perturbed (features; "
        "for a forecaster, covariates known in advance).",
    )
    perturb: Literal["shuffle", "set", "replace", "noise"] = Field(
        "shuffle",
        description="shuffle: the columns' values among the records; set: to "
        "`value`; replace: each value by `mapping`'s; noise: add Gaussian noise of "
        "`scale` times the column's standard deviation (numeric columns).",
    )
    value: Any = Field(None, description="perturb set: the value every record gets.")
    mapping: dict[str, Any] = Field(
        default_factory=dict, description="perturb replace: old value -> new value."
    )
    scale: float = Field(
        0.1,
        gt=0,
        description="perturb noise: the noise's standard deviation as a share of the column's.",
    )
    tolerance: float = Field(
        0.02,
        ge=0,
        description="How far a prediction may move: a class probability "
        "(classification) or the value (regression), absolute.",
    )
    max_share: float = Field(
        0.0, ge=0, le=1, description="The share of records allowed to move beyond the tolerance."
    )


class Change(_Section):
    """How a directional check changes its column: one of set, add, multiply."""

    set: Any = Field(None, description="The value every record gets.")
    add: float | None = Field(None, description="A number added to the value.")
    multiply: float | None = Field(None, description="A factor the value is multiplied by.")

    @model_validator(mode="after")
    def _one(self) -> Change:
        given = [k for k in ("set", "add", "multiply") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of set, add, multiply (got {given or 'none'})")
        return self


class DirectionalCheck(_Section):
    """A change of a column that must move the prediction one way."""

    name: str = Field(description="What the check shows, in words.")
    column: str = Field(description="The column changed.")
    change: Change = Field(description="How: {set: VALUE}, {add: N} or {multiply: F}.")
    expect: Literal["up", "down"] = Field(description="Which way the prediction must move.")
    of_class: str | None = Field(
        None, description="Classification: the class whose probability must move (required)."
    )
    min_share: float = Field(
        0.9,
        ge=0,
        le=1,
        description="The share of records that must not move the other "
        "way by more than `tolerance` (and the mean must move the expected way).",
    )
    tolerance: float = Field(
        0.0, ge=0, description="A move the other way this small counts as none."
    )


class SliceCheck(_Section):
    """The metric on each value of a column (or bins of a numeric one), with floors."""

    column: str = Field(description="The column that slices the validation rows.")
    bins: int = Field(4, ge=2, le=20, description="A numeric column: this many quantile bins.")
    metric: str | None = Field(
        None, description="The metric (valid_f1, valid_rmse...); the gate's when unset."
    )
    floor: float | None = Field(
        None,
        description="The worst value a slice may have (at least this for a metric "
        "where higher is better, at most for one where lower is).",
    )
    relative_floor: float | None = Field(
        None,
        gt=0,
        le=1,
        description="A slice at least this share of the whole's metric "
        "(higher is better), or at most the whole's divided by it (lower is better).",
    )
    max_regression: float | None = Field(
        None,
        ge=0,
        description="How much worse than the champion on the same slice a "
        "challenger may be (absolute); not judged without a comparable champion.",
    )
    min_rows: int = Field(
        30, ge=1, description="Slices with fewer validation rows are reported, not judged."
    )

    @model_validator(mode="after")
    def _judged(self) -> SliceCheck:
        if self.floor is None and self.relative_floor is None and self.max_regression is None:
            raise ValueError(
                f"slice check on {self.column!r} judges nothing: set floor, "
                "relative_floor or max_regression"
            )
        return self


class DataCheck(_Section):
    """The dataset version's own thresholds."""

    max_quarantine_fraction: float | None = Field(
        None, ge=0, le=1, description="Quarantined rows as a share of all rows read."
    )
    max_drifted_features: int | None = Field(
        None,
        ge=0,
        description="Features whose distribution drifted (PSI, monitor.* "
        "thresholds) from the champion's training data, at most.",
    )


class ChecksConfig(_Section):
    minimum: list[MinimumCheck] = Field(default_factory=list)
    invariance: list[InvarianceCheck] = Field(default_factory=list)
    directional: list[DirectionalCheck] = Field(default_factory=list)
    slices: list[SliceCheck] = Field(default_factory=list)
    data: DataCheck = Field(default_factory=DataCheck)
    sample_rows: int = Field(
        500,
        ge=10,
        description="Validation rows the invariance and "
        "directional checks perturb (a seeded sample).",
    )
    examples: int = Field(3, ge=0, le=20, description="Failing records shown per check.")
    gate: bool = Field(True, description="The gate refuses a challenger that fails a check.")

    @property
    def declared(self) -> bool:
        d = self.data
        return bool(
            self.minimum
            or self.invariance
            or self.directional
            or self.slices
            or d.max_quarantine_fraction is not None
            or d.max_drifted_features is not None
        )

    def perturbed(self) -> set[str]:
        """The columns invariance and directional checks change."""
        return {c for i in self.invariance for c in i.columns} | {
            d.column for d in self.directional
        }

    def recorded(self) -> set[str]:
        """The columns minimum-functionality records give."""
        return {k for m in self.minimum for r in m.records for k in r}
