"""The ``data.recommend`` section: what a recommendation task's interactions look like.

Each row of the data is one interaction: a user, an item, when, and optionally a rating.
The item column is the label (what a model predicts); ``data.label`` may be left out.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from rayops.config.base import _Section


class RecommendConfig(_Section):
    user: str = Field(description="The user column (declared categorical, text or integer, "
                      "nullable: false).")
    item: str = Field(description="The item column (declared categorical, text or integer, "
                      "nullable: false): the label, what a model ranks.")
    timestamp: str = Field(description="The timestamp column (declared datetime, nullable: "
                           "false): orders each user's history.")
    rating: str | None = Field(
        None, description="A column of explicit feedback (numeric or integer); none: every "
        "interaction is a positive.")
    min_rating: float | None = Field(
        None, description="Ratings below it are not positives: they still count as seen "
        "(never recommended back) but are neither learned as liked nor held out. Needs "
        "`rating`.")
    k: int = Field(10, ge=1, le=1000,
                   description="The cut-off of the ranking metrics (valid_recall_<k>, "
                   "valid_ndcg_<k>) and the default size of an answer.")
    history: int = Field(
        50, ge=2, le=1000,
        description="How many of a user's most recent items a sequential model reads (and "
        "the length of the training sequences).")
    min_interactions: int = Field(
        5, ge=2, description="Users with fewer positives stay in training only; the others' "
        "last positive is held out for validation.")

    @model_validator(mode="after")
    def _rating(self) -> RecommendConfig:
        if self.min_rating is not None and self.rating is None:
            raise ValueError(f"min_rating {self.min_rating} needs a rating column "
                             "(data.recommend.rating)")
        return self

    @property
    def metric_suffix(self) -> str:
        return str(self.k)
