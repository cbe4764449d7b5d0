"""The ``data.recommend`` section: what a recommendation task's interactions look like.

Each row of the data is one interaction: a user, an item, when, and optionally a rating.
The item column is the label (what a model predicts); ``data.label`` may be left out.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rayops.config.base import _Section
from rayops.config.columns import ColumnSpec


class AttributeTableConfig(_Section):
    """Attributes of the items (or the users): a table with one row per item (user)."""

    source: str = Field(
        description="Where the table is: a file under storage.root, or a "
        "full URI (read whole at every ingest)."
    )
    format: Literal["csv", "json", "parquet"] = Field(
        "csv", description="File format (json means JSON Lines)."
    )
    columns: dict[str, ColumnSpec] = Field(
        description="The table's contract: the item (user) column, as data.recommend "
        "names it, and each attribute (categorical, text, boolean, numeric, integer)."
    )
    max_quarantine_fraction: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Fail the ingest when a larger share of the "
        "table's rows breaks its contract (the others are left out, with their reasons "
        "logged).",
    )


class RecommendConfig(_Section):
    user: str = Field(
        description="The user column (declared categorical, text or integer, nullable: false)."
    )
    item: str = Field(
        description="The item column (declared categorical, text or integer, "
        "nullable: false): the label, what a model ranks."
    )
    timestamp: str = Field(
        description="The timestamp column (declared datetime, nullable: "
        "false): orders each user's history."
    )
    rating: str | None = Field(
        None,
        description="A column of explicit feedback (numeric or integer); none: every "
        "interaction is a positive.",
    )
    min_rating: float | None = Field(
        None,
        description="Ratings below it are not positives: they still count as seen "
        "(never recommended back) but are neither learned as liked nor held out. Needs "
        "`rating`.",
    )
    k: int = Field(
        10,
        ge=1,
        le=1000,
        description="The cut-off of the ranking metrics (valid_recall_<k>, "
        "valid_ndcg_<k>) and the default size of an answer.",
    )
    history: int = Field(
        50,
        ge=2,
        le=1000,
        description="How many of a user's most recent items a sequential model reads (and "
        "the length of the training sequences).",
    )
    items: AttributeTableConfig | None = Field(
        None,
        description="Item attributes (genres, a year...): the models add what they "
        "learn of each attribute value to the item's own vector, so items seen rarely "
        "borrow from those alike.",
    )
    users: AttributeTableConfig | None = Field(
        None,
        description="User attributes (a country, an age band...): added to what a "
        "model makes of the user (BPR's user vector, SASRec's reading of the history).",
    )
    min_interactions: int = Field(
        5,
        ge=2,
        description="Users with fewer positives stay in training only; the others' "
        "last positive is held out for validation.",
    )

    @model_validator(mode="after")
    def _rating(self) -> RecommendConfig:
        if self.min_rating is not None and self.rating is None:
            raise ValueError(
                f"min_rating {self.min_rating} needs a rating column (data.recommend.rating)"
            )
        for key, column in (("items", self.item), ("users", self.user)):
            table = getattr(self, key)
            if table is None:
                continue
            spec = table.columns.get(column)
            if spec is None or spec.nullable:
                raise ValueError(
                    f"{key}.columns must declare the column {column!r} with nullable: false"
                )
            if spec.type not in ("categorical", "text", "integer"):
                raise ValueError(f"{key}.columns.{column} must be categorical, text or integer")
            if len(table.columns) < 2:
                raise ValueError(f"{key}.columns lists no attribute besides {column!r}")
            dated = [n for n, c in table.columns.items() if c.type == "datetime"]
            if dated:
                raise ValueError(
                    f"{key}.columns {dated}: datetime attributes are not read; "
                    "give a year or a number instead"
                )
        return self

    @property
    def metric_suffix(self) -> str:
        return str(self.k)
