"""The one pipeline config: a YAML file validated by pydantic before any work starts.

Every section has defaults that run on a laptop (local Ray, a local folder as the object
store, a local MLflow store). A wrong key or value fails at load time with a message that
names the key, the value and what is allowed.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from rayops.errors import ConfigError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_URI_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def is_uri(value: str) -> bool:
    """True for ``scheme://...`` strings (s3://, file://, http://)."""
    return bool(_URI_SCHEME_RE.match(value))


def _absolute_local(value: str) -> str:
    """Resolve a local relative path against the working directory at load time."""
    if is_uri(value):
        return value
    return str(Path(value).expanduser().resolve())


# --------------------------------------------------------------------------- storage


class StorageConfig(_Section):
    root: str = Field(
        "./lake",
        description="Root of the object store: s3://bucket/prefix, file:///abs/path, or a local "
        "folder (relative paths resolve against the working directory). Raw data, curated "
        "datasets and checkpoints all live under it.",
    )
    endpoint_url: str | None = Field(
        None,
        description="S3-compatible endpoint (MinIO, moto, ...) such as http://127.0.0.1:9000. "
        "Credentials come from the environment (AWS_ACCESS_KEY_ID, ...), never from this file.",
    )
    region: str | None = Field(None, description="S3 region; the endpoint's default when unset.")
    access_key_id: SecretStr | None = Field(
        None, description="S3 access key. Prefer AWS_ACCESS_KEY_ID in the environment; a value "
        "here is never printed, logged or sent to MLflow.",
    )
    secret_access_key: SecretStr | None = Field(None, description="S3 secret key (see above).")
    session_token: SecretStr | None = Field(None, description="S3 session token (see above).")

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        if v.startswith("s3://") and not v[len("s3://") :].strip("/"):
            raise ValueError("an s3:// root needs a bucket, for example s3://my-bucket/rayops")
        return _absolute_local(v)

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/]+", v):
            raise ValueError("must start with http:// or https:// and name a host")
        return v


# --------------------------------------------------------------------------- data

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
        None, description="Calendar features of a datetime column; default: all of "
        + ", ".join(DATETIME_PARTS) + "."
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


class DataConfig(_Section):
    source: str = Field(
        "raw",
        description="Where the raw files are: a path under storage.root, or a full URI.",
    )
    format: Literal["csv", "json", "parquet"] = Field(
        "csv", description="File format of the raw files (json means JSON Lines)."
    )
    label: str = Field(description="The column to predict.")
    task: Literal["classification", "regression"] = Field(description="What kind of model.")
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
        description="impute: numeric nulls take the training mean, categorical nulls the "
        "'other' bucket; drop: rows with a null feature are dropped.",
    )
    valid_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="Share of rows held out for validation."
    )
    seed: int = Field(42, description="Seed of the deterministic train/validation split.")
    max_quarantine_fraction: float = Field(
        0.1, ge=0.0, le=1.0,
        description="Fail the ingest, committing nothing, when a larger share of the rows "
        "read breaks the schema.",
    )
    dataset: str | None = Field(
        None, description="Name of the curated dataset; default: the pipeline name."
    )

    @model_validator(mode="after")
    def _cross_fields(self) -> DataConfig:
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
        label_type = self.columns[self.label].type
        if self.task == "classification" and label_type in ("numeric", "datetime"):
            raise ValueError(
                f"task 'classification' needs a categorical, boolean or integer label; "
                f"{self.label!r} is {label_type!r}"
            )
        if self.task == "regression" and label_type not in ("numeric", "integer"):
            raise ValueError(
                f"task 'regression' needs a numeric or integer label; {self.label!r} is "
                f"{label_type!r}"
            )
        return self

    @property
    def feature_names(self) -> list[str]:
        chosen = self.features if self.features is not None else list(self.columns)
        return [c for c in chosen if c != self.label and c not in self.exclude]


# --------------------------------------------------------------------------- model / train


class ModelConfig(_Section):
    hidden_sizes: list[Annotated[int, Field(ge=1, le=8192)]] = Field(
        [64, 32], min_length=1, description="Width of each hidden layer of the MLP."
    )
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout after each hidden layer.")
    activation: Literal["relu", "gelu", "tanh"] = Field("relu", description="Hidden activation.")


class TrainConfig(_Section):
    num_workers: int = Field(2, ge=1, description="Data-parallel (DDP) training workers.")
    use_gpu: bool = Field(False, description="One GPU per worker; NCCL instead of gloo.")
    cpus_per_worker: float = Field(
        1.0,
        gt=0.0,
        description="CPUs each worker reserves. Fractions leave room for Ray Data on small hosts.",
    )
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict,
        description="Extra Ray resources each worker reserves, e.g. {memory: 2e9} or a custom "
        "accelerator resource; CPU and GPU come from cpus_per_worker and use_gpu.",
    )
    epochs: int = Field(10, ge=1, le=10_000, description="Passes over the training data.")
    batch_size: int = Field(
        128, ge=1,
        description="Rows per batch on each worker; the global batch is batch_size x workers.",
    )
    learning_rate: float = Field(
        1e-3, gt=0.0, lt=10.0, description="AdamW learning rate for a single worker."
    )
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "sqrt",
        description="How the learning rate grows with the global batch (x workers): sqrt "
        "suits Adam-type optimizers, linear is the SGD rule (use with warmup_epochs).",
    )
    lr_schedule: Literal["constant", "cosine", "step"] = Field(
        "cosine", description="Per-epoch decay after warmup (step: x0.1 at 50% and 75%)."
    )
    warmup_epochs: int = Field(0, ge=0, description="Epochs of linear warmup from lr/10.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="bf16 autocast (CPU or GPU) or fp16 autocast with a grad scaler (GPU).",
    )
    early_stopping_patience: int | None = Field(
        None, ge=1,
        description="Stop after this many epochs without a better target metric.",
    )
    max_failures: int = Field(
        2, ge=0, description="Worker-group failures survived by resuming from a checkpoint."
    )
    data_loading: Literal["auto", "memory", "stream"] = Field(
        "auto",
        description="memory: each worker keeps its shard as tensors after the first epoch "
        "(fast); stream: Ray Data every epoch (larger than memory); auto: memory below "
        "1 GiB per shard.",
    )
    seed: int = Field(42, description="Seed for weights and shuffling.")
    checkpoints_to_keep: int = Field(
        2, ge=1, description="Best checkpoints kept in storage, ranked by the target metric."
    )

    @property
    def lr_factor(self) -> float:
        """Learning-rate multiplier for the global batch of num_workers x batch_size."""
        return {"none": 1.0, "linear": float(self.num_workers),
                "sqrt": float(self.num_workers) ** 0.5}[self.lr_scaling]


# --------------------------------------------------------------------------- tune


class _Dim(_Section):
    pass


class UniformDim(_Dim):
    type: Literal["uniform"]
    low: float
    high: float


class LogUniformDim(_Dim):
    type: Literal["loguniform"]
    low: float = Field(gt=0.0)
    high: float = Field(gt=0.0)


class RandIntDim(_Dim):
    type: Literal["randint"]
    low: int
    high: int = Field(description="Exclusive upper bound.")


class ChoiceDim(_Dim):
    type: Literal["choice"]
    values: list[Any] = Field(min_length=1)


SearchDim = Annotated[
    UniformDim | LogUniformDim | RandIntDim | ChoiceDim, Field(discriminator="type")
]


class SchedulerConfig(_Section):
    type: Literal["asha", "fifo"] = Field("asha", description="asha stops weak trials early.")
    grace_period: int = Field(2, ge=1, description="Epochs every trial runs before it can stop.")
    reduction_factor: float = Field(2.0, gt=1.0, description="ASHA's halving rate.")


class TuneConfig(_Section):
    enabled: bool = Field(False, description="Run a sweep instead of a single training run.")
    search: Literal["random", "grid", "optuna"] = Field(
        "random",
        description="random sampling (num_samples trials); grid (every combination of the "
        "choice values, once; num_samples is ignored); optuna (TPE, learns from finished "
        "trials).",
    )
    num_samples: int = Field(4, ge=1, description="Trials to run.")
    max_concurrent_trials: int = Field(1, ge=1, description="Trials running at the same time.")
    metric: str | None = Field(
        None, description="Metric to optimize; default valid_f1 (classification), valid_rmse."
    )
    mode: Literal["min", "max"] | None = Field(None, description="Direction of the metric.")
    search_space: dict[str, SearchDim] = Field(
        default_factory=dict,
        description="Dotted config keys under model. or train. mapped to a distribution.",
    )
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    final_model: Literal["reuse", "retrain"] = Field(
        "reuse",
        description="reuse the best trial's model, or retrain the best configuration once "
        "more before it becomes the challenger.",
    )

    @model_validator(mode="after")
    def _dims(self) -> TuneConfig:
        for key, dim in self.search_space.items():
            if isinstance(dim, (UniformDim, LogUniformDim, RandIntDim)) and dim.low >= dim.high:
                raise ValueError(f"search_space.{key}: low ({dim.low}) must be below high")
        if (self.metric is None) != (self.mode is None):
            raise ValueError("set both metric and mode, or neither")
        if self.search == "grid":
            ranged = [k for k, d in self.search_space.items() if not isinstance(d, ChoiceDim)]
            if ranged:
                raise ValueError(f"search 'grid' needs choice dimensions only; {ranged} are "
                                 "ranges (use search 'random' or 'optuna')")
        return self


# --------------------------------------------------------------------------- tracking / serve


class TrackingConfig(_Section):
    uri: str = Field(
        "sqlite:///mlflow/mlflow.db",
        description="MLflow tracking URI: sqlite:///path (local file), http(s)://server, ...",
    )
    artifact_location: str | None = Field(
        None,
        description="Where a new experiment stores artifacts; default: next to a sqlite store, "
        "the server's choice otherwise.",
    )
    experiment: str | None = Field(None, description="Experiment name; default: pipeline name.")
    registered_model: str | None = Field(
        None, description="Registry name of the model; default: the pipeline name."
    )

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        if v.startswith("sqlite:///"):
            path = v[len("sqlite:///") :]
            return "sqlite:///" + _absolute_local(path) if not path.startswith("/") else v
        if not is_uri(v):
            raise ValueError("must be a URI such as sqlite:///mlflow.db or http://127.0.0.1:5000")
        return v

    @model_validator(mode="after")
    def _artifacts(self) -> TrackingConfig:
        if self.artifact_location is None and self.uri.startswith("sqlite:///"):
            store = Path(self.uri[len("sqlite:///") :])
            object.__setattr__(self, "artifact_location", str(store.parent / "artifacts"))
        elif self.artifact_location is not None:
            object.__setattr__(self, "artifact_location", _absolute_local(self.artifact_location))
        return self


class AutoscalingConfig(_Section):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0.0)
    upscale_delay_s: float = Field(10.0, ge=0.0)
    downscale_delay_s: float = Field(60.0, ge=0.0)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})"
            )
        return self


class ServeConfig(_Section):
    app_name: str = Field("rayops", description="Name of the Serve application.")
    route_prefix: str = Field("/", description="HTTP prefix of the API.")
    host: str = Field("127.0.0.1", description="Interface the HTTP proxy binds to.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the Serve proxy.")
    model_alias: str = Field("champion", description="Registry alias of the model to serve.")
    cpus_per_replica: float = Field(0.5, gt=0.0, description="CPUs each replica reserves.")
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig)
    max_ongoing_requests: int = Field(
        64, ge=1, description="Requests one replica works on at once (>= max_batch_size)."
    )
    max_batch_size: int = Field(32, ge=1, description="Requests merged into one model call.")
    batch_wait_timeout_s: float = Field(0.005, ge=0.0, description="Wait to fill a batch.")
    max_records_per_request: int = Field(1000, ge=1, description="Records one request may send.")
    max_queued_requests: int = Field(
        200, ge=-1,
        description="Requests waiting for a replica beyond which new ones get 503 at once "
        "(-1: unbounded).",
    )
    request_timeout_s: float = Field(30.0, gt=0.0, description="End-to-end HTTP timeout (408).")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body (413).")
    model_poll_interval_s: float = Field(
        5.0, ge=0.0,
        description="How often replicas check where model_alias points; a move switches them "
        "to the new version without dropping requests (0: never).",
    )
    auth_token_env: str | None = Field(
        None, description="Name of an environment variable holding a bearer token to require "
        "(the token itself never goes in this file).",
    )
    auth_token_file: str | None = Field(
        None, description="Path of a file holding the bearer token (read by each replica).",
    )

    @field_validator("route_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with '/'")
        return v

    @model_validator(mode="after")
    def _batching(self) -> ServeConfig:
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) is below max_batch_size "
                f"({self.max_batch_size}): a replica could never fill a batch"
            )
        return self


# --------------------------------------------------------------------------- pipeline


class PipelineConfig(_Section):
    name: str = Field(description="Pipeline name: letters, digits, '_', '-', '.'.")
    storage: StorageConfig = Field(default_factory=StorageConfig)
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("use 1-63 letters, digits, '_', '-' or '.', starting alphanumeric")
        return v

    @model_validator(mode="after")
    def _search_space_keys(self) -> PipelineConfig:
        for key in self.tune.search_space:
            section, _, field = key.partition(".")
            owner = {"model": ModelConfig, "train": TrainConfig}.get(section)
            if owner is None or field not in owner.model_fields:
                allowed = [f"model.{f}" for f in ModelConfig.model_fields] + [
                    f"train.{f}" for f in TrainConfig.model_fields
                ]
                raise ValueError(
                    f"tune.search_space key {key!r} is not a tunable setting; "
                    f"allowed: {', '.join(allowed)}"
                )
        return self

    @property
    def dataset_name(self) -> str:
        return self.data.dataset or self.name

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def model_name(self) -> str:
        return self.tracking.registered_model or self.name

    @property
    def target_metric(self) -> tuple[str, Literal["min", "max"]]:
        """The metric that ranks checkpoints and trials, with its direction."""
        if self.tune.metric is not None and self.tune.mode is not None:
            return self.tune.metric, self.tune.mode
        if self.data.task == "classification":
            return "valid_f1", "max"
        return "valid_rmse", "min"

    def with_overrides(self, overrides: dict[str, Any]) -> PipelineConfig:
        """A copy with dotted keys replaced (``{"train.epochs": 3}``), validated again."""
        raw = self.model_dump()
        for key, value in overrides.items():
            _set_dotted(raw, key, value)
        return validate_config(raw)


# --------------------------------------------------------------------------- loading


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["train.epochs=3", "tune.enabled=false"]`` into typed values (YAML scalars)."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r} is not KEY=VALUE (e.g. train.epochs=3)")
        result[key.strip()] = yaml.safe_load(value) if value else ""
    return result


def validate_config(raw: Any, source: str = "config") -> PipelineConfig:
    """Validate a parsed config mapping; errors name the key, the value and what is allowed."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read and validate a pipeline config file, applying ``KEY=VALUE`` overrides."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if raw is None:
        raise ConfigError(f"config file {str(path)!r} is empty")
    if isinstance(raw, dict):
        for key, value in parse_overrides(overrides or []).items():
            _set_dotted(raw, key, value)
    return validate_config(raw, source=str(path))


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} invalid setting(s):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(err["loc"][:-1])
            hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
            lines.append(f"  {loc}: unknown key{hint}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        shown = repr(err.get("input"))
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"  {loc}: {msg} (got {shown})")
    return "\n".join(lines)


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section at ``loc``, walking models and dict values."""
    annotation: Any = PipelineConfig
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return []
            annotation = field.annotation
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """Strip Optional[...] and Annotated[...] around a model type."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation
