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
        return Annotated[int, Field(strict=True, ge=low, le=high),
                         BeforeValidator(_whole_number)]
    if spec.type == "boolean":
        return Annotated[bool, Field(strict=True)]
    if spec.type == "datetime":
        return dt.datetime  # ISO 8601 text in JSON
    if spec.values:
        return Literal[tuple(spec.values)]  # type: ignore[valid-type]
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
        "PredictRequest", __config__=ConfigDict(extra="forbid"),
        records=(list[record], Field(min_length=1, max_length=max_records)),  # type: ignore[valid-type]
    )


class FeedbackItem(BaseModel):
    """A true label for one served record (its type: the task's, see :func:`feedback_model`)."""

    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=1, max_length=200,
                            description="The X-Request-ID the prediction was answered under.")
    record_index: int = Field(0, ge=0, description="The record's place in that request.")


def feedback_model(max_labels: int, task: str = "classification") -> type[BaseModel]:
    """The /feedback body: labels of the type the ``task`` reads (a regression model's must
    be finite numbers: text would stop its metrics)."""
    item = create_model("FeedbackLabel", __base__=FeedbackItem,
                        label=(task_of(task).feedback_label, ...))
    return create_model(
        "FeedbackRequest", __config__=ConfigDict(extra="forbid"),
        labels=(list[item], Field(min_length=1, max_length=max_labels)),  # type: ignore[valid-type]
    )


class FeedbackResponse(BaseModel):
    accepted: int = Field(description="Labels stored in the feedback table (the answer comes "
                         "once they are: a 202 is never lost with a replica).")


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
        None, description="This request's X-Request-ID: the key its records have in the "
        "prediction log.")


class AliasState(BaseModel):
    """Where the alias points, what this replica serves, and why they differ."""

    alias: str
    target_version: str | None = Field(description="Version the alias pointed to at the "
                                       "replica's last successful look-up.")
    served_version: str
    not_served: dict[str, str] = Field(description="Versions this replica refused, with the "
                                       "reason (each is refused once, never re-downloaded).")
    registry_reachable: bool
    registry_checked_s_ago: float | None = Field(description="Seconds since the registry "
                                                 "last answered.")
    registry_error: str | None


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    model: ModelInfo
    alias: AliasState


class Metadata(BaseModel):
    model: ModelInfo
    alias_state: AliasState
    task: str
    family: str = Field(description="The model family: mlp or xgboost.")
    dataset: str | None
    target_metric: str | None
    metrics: dict[str, float]
    input_schema: dict[str, Any]
    shadow: dict[str, Any] | None = Field(
        None, description="The model beside the served one (serve.shadow_alias) and the "
        "share of traffic mirrored to it or answered by it.")
    served: dict[str, int]
