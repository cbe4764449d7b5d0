"""A column's contract: its type and what values it allows (the schema of data, item and
user tables alike)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rayops.config.base import _Section

ColumnType = Literal["numeric", "integer", "categorical", "text", "boolean", "datetime"]
DatetimePart = Literal["hour", "weekday", "month", "year", "dayofyear"]
DATETIME_PARTS: tuple[DatetimePart, ...] = ("hour", "weekday", "month", "year", "dayofyear")


class ColumnSpec(_Section):
    type: ColumnType = Field(
        description="numeric, integer, boolean; categorical or text (both one-hot over the "
        "most frequent values); datetime (ISO 8601, expanded into calendar features)."
    )
    nullable: bool = Field(True, description="Whether a missing value is allowed.")
    min: float | None = Field(None, description="Smallest allowed value (numeric, integer).")
    max: float | None = Field(None, description="Largest allowed value (numeric, integer).")
    values: list[str] | None = Field(
        None, description="Allowed categories (categorical); anything else is rejected."
    )
    expand: list[DatetimePart] | None = Field(
        None,
        description="Calendar features of a datetime column; default: all of "
        + ", ".join(DATETIME_PARTS)
        + ".",
    )

    @model_validator(mode="after")
    def _constraints(self) -> ColumnSpec:
        numeric = self.type in ("numeric", "integer")
        if not numeric and (self.min is not None or self.max is not None):
            raise ValueError(f"min/max apply to numeric or integer columns, not {self.type!r}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if self.values is not None and self.type not in ("categorical", "text"):
            raise ValueError(f"values apply to categorical columns, not {self.type!r}")
        if self.values is not None and not self.values:
            raise ValueError("values must list at least one category")
        if self.expand is not None and self.type != "datetime":
            raise ValueError(f"expand applies to datetime columns, not {self.type!r}")
        if self.expand is not None and not self.expand:
            raise ValueError("expand must list at least one calendar feature")
        return self

    @property
    def parts(self) -> tuple[str, ...]:
        """The calendar features a datetime column becomes."""
        return tuple(self.expand) if self.expand else DATETIME_PARTS
