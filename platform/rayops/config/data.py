"""The data section: the schema contract and how raw data becomes a dataset."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from rayops.config.base import _Section
from rayops.config.columns import ColumnSpec
from rayops.config.forecast import ForecastConfig
from rayops.config.recommend import RecommendConfig
from rayops.tasks import task_names, task_of


class AvroConfig(_Section):
    """How a topic's or stream's Avro messages are decoded (``data.format: avro``)."""

    schema_path: str = Field(
        alias="schema",
        description="The writer's schema (an .avsc JSON file): a path under "
        "storage.root or a full URI. A Schema Registry is not consulted.",
    )
    framing: Literal["confluent", "bare"] = Field(
        "confluent",
        description="confluent: each value is a zero byte, a 4-byte schema id "
        "and the record (Confluent's serializers); bare: the record's Avro binary alone.",
    )
    model_config = {**_Section.model_config, "populate_by_name": True}


class DataConfig(_Section):
    source: str = Field(
        "raw",
        description="Where the raw files are: a path under storage.root, or a full URI; or "
        "a Kafka topic, kafka://HOST:PORT[,HOST:PORT]/TOPIC (client settings from "
        "RAYOPS_KAFKA_* environment variables); or a Kinesis data stream, kinesis://STREAM "
        "(region, endpoint and credentials from the AWS environment).",
    )
    format: Literal["csv", "json", "parquet", "avro"] = Field(
        "csv",
        description="File format of the raw files (json means JSON Lines); of a "
        "topic's messages or a stream's records: json (an object each), csv (a line of "
        "the declared columns) or avro (a record each, see data.avro).",
    )
    max_lost_messages: int = Field(
        0,
        ge=0,
        description="A topic's messages that may expire (retention) before an "
        "ingest reads them: more fail the ingest, naming the lost offsets; fewer are "
        "counted in the manifest.",
    )
    avro: AvroConfig | None = Field(
        None, description="data.format avro: the writer's schema and the framing of each message."
    )
    watch_interval_s: float = Field(
        30.0,
        ge=1.0,
        description="`rayops ingest --watch`: seconds from the start of one "
        "poll to the next (a version is committed when there is something new); "
        "--interval overrides it.",
    )
    label: str = Field(
        description="The column to predict (for a recommendation task, "
        "data.recommend.item: it may be left out)."
    )
    task: str = Field(
        description="What kind of model: classification, regression, "
        "forecasting or recommendation (or a task a plugin registers)."
    )

    @model_validator(mode="before")
    @classmethod
    def _item_is_the_label(cls, values: Any) -> Any:
        """A recommender predicts the item: ``label`` defaults to ``recommend.item``."""
        if isinstance(values, dict) and "label" not in values:
            recommend = values.get("recommend")
            if isinstance(recommend, dict) and "item" in recommend:
                return {**values, "label": recommend["item"]}
        return values

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        if task not in task_names():
            expected = " or ".join(repr(name) for name in task_names())
            raise PydanticCustomError(
                "literal_error", "Input should be {expected}", {"expected": expected}
            )
        return task

    columns: dict[str, ColumnSpec] = Field(
        description="The schema contract: every column that is used, with its type."
    )
    features: list[str] | None = Field(
        None, description="Columns to use as features; default: every column but the label."
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="Columns to drop even if declared (ids, columns that leak the label).",
    )
    null_strategy: Literal["impute", "drop"] = Field(
        "impute",
        description="impute: numeric nulls take the training median (quantile scaling) or "
        "mean (standard), with a 0/1 'missing' input next to each numeric column that had "
        "nulls in training; categorical nulls the 'other' bucket; drop: rows with a null "
        "feature are dropped.",
    )
    scaling: Literal["both", "quantile", "standard"] = Field(
        "both",
        description="How numeric features enter the model. quantile: mapped through the "
        "training distribution onto a normal one (robust to skew and outliers); standard: "
        "(x - mean) / std (keeps the scale of a tail the label may follow); both: two inputs "
        "per column, the network takes what helps. Trees do not care.",
    )
    valid_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="Share of rows held out for validation."
    )
    seed: int = Field(42, description="Seed of the deterministic train/validation split.")
    max_quarantine_fraction: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Fail the ingest, committing nothing, when a larger share of the rows "
        "read breaks the schema.",
    )
    max_failed_files: float = Field(
        0,
        ge=0,
        description="Files that may fail to be read (storage errors that outlast the retries) "
        "before the ingest fails, committing nothing: a count (1, 2, ...) or, below 1, a "
        "share of the files read. A failed file is not consumed: the next ingest reads it.",
    )
    retention_hours: int = Field(
        168,
        ge=1,
        description="Clean-up never removes a curated file younger than this: data of old "
        "versions (time travel) and files of ingests that failed or are still writing.",
    )
    dataset: str | None = Field(
        None, description="Name of the curated dataset; default: the pipeline name."
    )
    forecast: ForecastConfig | None = Field(
        None,
        description="The series of a forecasting task (data.task: forecasting): "
        "timestamp, series, frequency, horizon... (see docs/forecasting.md).",
    )
    recommend: RecommendConfig | None = Field(
        None,
        description="The interactions of a recommendation task (data.task: "
        "recommendation): user, item, timestamp, rating, k... (see "
        "docs/recommendations.md).",
    )
    vanished_files: Literal["fail", "keep", "drop"] = Field(
        "fail",
        description="A source file an earlier version consumed is gone (lifecycle expiry, "
        "archiving). fail: the ingest stops, committing nothing, and names the files; keep: "
        "their rows stay in the dataset (raw files that expire on purpose); drop: the "
        "dataset is rebuilt without them.",
    )

    @model_validator(mode="after")
    def _cross_fields(self) -> DataConfig:
        log = self.source.startswith(("kafka://", "kinesis://"))
        if log and self.format == "parquet":
            raise ValueError(
                "format 'parquet' is not a message format of a Kafka or Kinesis "
                "source (data.source: " + self.source + "): json, csv or avro"
            )
        if self.format == "avro" and not log:
            raise ValueError(
                "format 'avro' is a message format of a Kafka or Kinesis source "
                f"(data.source: {self.source!r} is files: csv, json or parquet)"
            )
        if (self.format == "avro") != (self.avro is not None):
            raise ValueError(
                "format 'avro' needs data.avro.schema (the writer's schema), "
                "and data.avro is only for format 'avro'"
            )
        declared = set(self.columns)
        if self.label not in declared:
            raise ValueError(
                f"label {self.label!r} is not declared in columns; declared: {sorted(declared)}"
            )
        for key in ("features", "exclude"):
            unknown = sorted(set(getattr(self, key) or []) - declared)
            if unknown:
                raise ValueError(
                    f"{key} names undeclared columns {unknown}; declared: {sorted(declared)}"
                )
        if self.label in (self.features or []) or self.label in self.exclude:
            raise ValueError(f"label {self.label!r} cannot also be a feature or excluded")
        if not self.feature_names:
            raise ValueError("no feature columns left after features/exclude")
        task = task_of(self.task)
        wrong = task.label_error(self.label, self.columns[self.label].type) or task.data_error(self)
        if wrong:
            raise ValueError(wrong)
        return self

    def failed_files_allowed(self, files: int) -> int:
        """How many of ``files`` may fail to be read (``max_failed_files``)."""
        limit = self.max_failed_files
        return int(limit * files) if limit < 1 else int(limit)

    @property
    def feature_names(self) -> list[str]:
        chosen = self.features if self.features is not None else list(self.columns)
        return [c for c in chosen if c != self.label and c not in self.exclude]
