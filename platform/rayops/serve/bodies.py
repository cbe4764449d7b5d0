"""Request and response bodies of the HTTP API, built from a model's input schema."""

import datetime as dt
from typing import Annotated, Any, Literal, Optional

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    create_model,
)

from rayops.config import ColumnSpec
from rayops.data.validate import MAX_INTEGER
from rayops.tasks import task_of


def _whole_number(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def field_type(spec: ColumnSpec) -> Any:
    """Strict pydantic types: a string where a number belongs is a 422, not a coercion."""
    if spec.type == "numeric":
        return Annotated[float, Field(strict=True, allow_inf_nan=False, ge=spec.min, le=spec.max)]
    if spec.type == "integer":  # JSON's 95.0 is the integer 95; 95.5 and "95" are not
        # without bounds a 400-digit number would pass and overflow float() in the model
        low = -MAX_INTEGER if spec.min is None else max(spec.min, -MAX_INTEGER)
        high = MAX_INTEGER if spec.max is None else min(spec.max, MAX_INTEGER)
        return Annotated[int, Field(strict=True, ge=low, le=high), BeforeValidator(_whole_number)]
    if spec.type == "boolean":
        return Annotated[bool, Field(strict=True)]
    if spec.type == "datetime":
        return dt.datetime  # ISO 8601 text in JSON
    if spec.values:
        return Literal[tuple(spec.values)]
    return Annotated[str, Field(strict=True, max_length=512)]


def record_model(schema: dict[str, ColumnSpec], label: str) -> type[BaseModel]:
    """One input record: the features, typed; unknown keys refused; nullable ones optional."""
    fields: dict[str, Any] = {}
    for name, spec in schema.items():
        if name == label:
            continue
        kind = field_type(spec)
        fields[name] = (Optional[kind], None) if spec.nullable else (kind, ...)  # noqa: UP045
    return create_model("Record", __config__=ConfigDict(extra="forbid"), **fields)


def request_model(record: type[BaseModel], max_records: int) -> type[BaseModel]:
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        records=(list[record], Field(min_length=1, max_length=max_records)),  # type: ignore[valid-type]
    )


def _optional(kind: Any) -> tuple[Any, Any]:
    return (Optional[kind], None)  # noqa: UP045


def forecast_model(
    schema: dict[str, ColumnSpec], layout: dict[str, Any], max_history: int
) -> type[BaseModel]:
    """The /forecast body of a forecaster trained with ``layout``: the series (its columns,
    typed), the history (timestamp, label, known covariates; optional: without it the
    latest curated data is read) and the future steps with their known covariates."""
    ts, label, known = layout["timestamp"], layout["label"], list(layout["known"])
    history = create_model(  # type: ignore[call-overload]
        "HistoryStep",
        __config__=ConfigDict(extra="forbid"),
        **{
            ts: (dt.datetime, ...),
            label: _optional(field_type(schema[label])),
            **{k: _optional(field_type(schema[k])) for k in known},
        },
    )
    future = create_model(  # type: ignore[call-overload]
        "FutureStep",
        __config__=ConfigDict(extra="forbid"),
        **{ts: (dt.datetime, ...)},
        **{
            k: _optional(field_type(schema[k]))
            if schema[k].nullable
            else (field_type(schema[k]), ...)
            for k in known
        },
    )
    fields: dict[str, Any] = {
        "history": (
            Optional[list[history]],  # noqa: UP045
            Field(
                None,
                max_length=max_history,
                description="The series' latest observations, "
                "oldest first; omitted: the latest curated data",
            ),
        ),
        "future": (
            list[future],
            Field(
                min_length=1,
                max_length=int(layout["horizon"]),
                description="The steps to forecast, each with its covariates known in advance",
            ),
        ),
    }
    if layout["series"]:
        series = create_model(
            "Series",
            __config__=ConfigDict(extra="forbid"),  # type: ignore[call-overload]
            **{c: (field_type(schema[c]), ...) for c in layout["series"]},
        )
        fields["series"] = (series, ...)
    return create_model("ForecastRequest", __config__=ConfigDict(extra="forbid"), **fields)


class ForecastStep(BaseModel):
    ts: str = Field(description="The step forecast (ISO 8601, UTC).")
    value: float = Field(description="The forecast: the median.")
    quantiles: dict[str, float] = Field(description="P10, P50 and P90 (keys 0.1, 0.5, 0.9).")


class RecommendRequest(BaseModel):
    """The /recommend body."""

    model_config = ConfigDict(extra="forbid")
    user: str = Field(
        min_length=1,
        max_length=200,
        description="The user's id (a string whatever its type in the data).",
    )
    k: int | None = Field(
        None, ge=1, le=1000, description="How many items; default: data.recommend.k."
    )
    recent_items: list[str] = Field(
        default_factory=list,
        max_length=1000,
        description="Items of the user's session since the data was curated, oldest "
        "first: they count as interactions (never recommended back).",
    )


class RecommendedItem(BaseModel):
    item: str = Field(description="The item's id.")
    score: float = Field(
        description="The model's score (the fallback: the item's share of positives)."
    )


class FeedbackItem(BaseModel):
    """A true label for one served record (its type: the task's, see :func:`feedback_model`)."""

    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(
        min_length=1,
        max_length=200,
        description="The X-Request-ID the prediction was answered under.",
    )
    record_index: int = Field(0, ge=0, description="The record's place in that request.")


def feedback_model(max_labels: int, task: str = "classification") -> type[BaseModel]:
    """The /feedback body: labels of the type the ``task`` reads (a regression model's must
    be finite numbers: text would stop its metrics)."""
    item = create_model(
        "FeedbackLabel", __base__=FeedbackItem, label=(task_of(task).feedback_label, ...)
    )
    return create_model(
        "FeedbackRequest",
        __config__=ConfigDict(extra="forbid"),
        labels=(list[item], Field(min_length=1, max_length=max_labels)),
    )


class FeedbackResponse(BaseModel):
    accepted: int = Field(
        description="Labels stored in the feedback table (the answer comes "
        "once they are: a 202 is never lost with a replica)."
    )


class ModelInfo(BaseModel):
    name: str
    version: str
    alias: str
    run_id: str


class Prediction(BaseModel):
    prediction: str | float
    probabilities: dict[str, float] | None = None


class PredictResponse(BaseModel):
    model: ModelInfo
    predictions: list[Prediction]
    request_id: str | None = Field(
        None,
        description="This request's X-Request-ID: the key its records have in the prediction log.",
    )


class ForecastResponse(BaseModel):
    forecast: list[ForecastStep]
    model: ModelInfo
    request_id: str | None = None


class RecommendResponse(BaseModel):
    items: list[RecommendedItem]
    fallback: bool = Field(
        description="True: the user could not be ranked (no "
        "interactions, or unknown to a model that reads user ids); these "
        "are the most popular items the user has not met."
    )
    model: ModelInfo
    request_id: str | None = None


class AliasState(BaseModel):
    """Where the alias points, what this replica serves, and why they differ."""

    alias: str
    target_version: str | None = Field(
        description="Version the alias pointed to at the replica's last successful look-up."
    )
    served_version: str
    not_served: dict[str, str] = Field(
        description="Versions this replica refused, with the "
        "reason (each is refused once, never re-downloaded)."
    )
    registry_reachable: bool
    registry_checked_s_ago: float | None = Field(
        description="Seconds since the registry last answered."
    )
    registry_error: str | None


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    model: ModelInfo
    alias: AliasState


class Metadata(BaseModel):
    model: ModelInfo
    alias_state: AliasState
    task: str
    family: str = Field(description="The model family: mlp, xgboost, bpr, sasrec or a plugin's.")
    dataset: str | None
    target_metric: str | None
    metrics: dict[str, float]
    input_schema: dict[str, Any]
    shadow: dict[str, Any] | None = Field(
        None,
        description="The model beside the served one (serve.shadow_alias) and the "
        "share of traffic mirrored to it or answered by it.",
    )
    served: dict[str, int]
