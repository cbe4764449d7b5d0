"""The pipeline config: one section per stage, and the checks that need two sections."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, field_validator, model_validator

from rayops.config.base import _NAME_RE, StorageConfig, _Section
from rayops.config.checks import ChecksConfig
from rayops.config.data import DataConfig
from rayops.config.gate import GateConfig
from rayops.config.monitor import MonitorConfig
from rayops.config.operate import OperateConfig
from rayops.config.serving import CHALLENGER, ServeConfig, TrackingConfig
from rayops.config.training import ModelConfig, TrainConfig, TuneConfig
from rayops.errors import ConfigError
from rayops.families import tasks_of
from rayops.tasks import Mode, task_names, task_of


class PipelineConfig(_Section):
    name: str = Field(description="Pipeline name: letters, digits, '_', '-', '.'.")
    storage: StorageConfig = Field(default_factory=StorageConfig)
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    operate: OperateConfig = Field(default_factory=OperateConfig)
    checks: ChecksConfig = Field(
        default_factory=ChecksConfig,
        description="Behavioural checks, slice floors and data "
        "thresholds a model must pass: `rayops check`, and the gate before it promotes.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("use 1-63 letters, digits, '_', '-' or '.', starting alphanumeric")
        return v

    @model_validator(mode="after")
    def _search_space_keys(self) -> PipelineConfig:
        for key in self.tune.search_space:
            if not _tunable(key):
                allowed = [
                    *_setting_keys("model", ModelConfig),
                    *_setting_keys("train", TrainConfig),
                ]
                raise ValueError(
                    f"tune.search_space key {key!r} is not a tunable setting; "
                    f"allowed: {', '.join(allowed)}"
                )
        return self

    @model_validator(mode="after")
    def _key_features(self) -> PipelineConfig:
        unknown = [f for f in self.monitor.key_features if f not in self.data.feature_names]
        if unknown:
            raise ValueError(
                f"monitor.key_features {unknown} are not features of this "
                f"pipeline; its features: {', '.join(self.data.feature_names)}"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _task_default_family(cls, values: Any) -> Any:
        """model.family defaults to the task's own (a recommender is no MLP)."""
        if not isinstance(values, dict) or not isinstance(values.get("data"), dict):
            return values
        model = values.get("model") or {}
        task = values["data"].get("task")
        if isinstance(model, dict) and "family" not in model and task in task_names():
            return {**values, "model": {**model, "family": task_of(task).default_family}}
        return values

    @model_validator(mode="after")
    def _family_fits_the_task(self) -> PipelineConfig:
        tasks = tasks_of(self.model.family)
        if tasks is not None and self.data.task not in tasks:
            raise ValueError(
                f"model.family {self.model.family!r} learns "
                f"{', '.join(tasks)}, not data.task {self.data.task!r}"
            )
        return self

    @model_validator(mode="after")
    def _metric_names(self) -> PipelineConfig:
        """Every key that names a metric must name one this task reports, so a typo fails
        here instead of in the workers after the first epoch."""
        known = self.metrics
        named = {"tune.metric": self.tune.metric, "gate.metric": self.gate.metric}
        named |= {f"gate.max_regression.{m}": m for m in self.gate.max_regression}
        for key, metric in named.items():
            if metric is not None and metric not in known:
                raise ValueError(
                    f"{key} {metric!r} is not a metric of a {self.data.task} "
                    f"run; use one of {', '.join(sorted(known))}"
                )
        if self.tune.metric and self.tune.mode and self.tune.mode != known[self.tune.metric]:
            better = "higher" if known[self.tune.metric] == "max" else "lower"
            raise ValueError(
                f"tune.mode {self.tune.mode!r} contradicts tune.metric "
                f"{self.tune.metric!r}, which is better {better}; use mode "
                f"{known[self.tune.metric]!r} or leave mode out"
            )
        return self

    @model_validator(mode="after")
    def _checks_fit(self) -> PipelineConfig:
        """Checks name features, slice on declared columns, score task metrics, and ask
        a classifier about its classes."""
        checks, data = self.checks, self.data
        if (checks.invariance or checks.directional) and data.recommend is not None:
            raise ValueError(
                "checks.invariance and directional judge answers to records or "
                "forecast steps, not yet a recommendation model's: use "
                "checks.minimum (expect_in_top_k), slices and data"
            )
        if data.forecast is not None:  # the future steps' covariates are what can change
            changeable, kind = (
                set(data.forecast.known_in_advance),
                "covariates known in advance (data.forecast.known_in_advance)",
            )
        else:
            changeable, kind = set(data.feature_names), "features of this pipeline"
        unknown = sorted(checks.perturbed() - changeable)
        if unknown:
            raise ValueError(
                f"checks change {unknown}, not {kind}: {', '.join(sorted(changeable)) or 'none'}"
            )
        recordable = (
            set(data.columns) if data.forecast or data.recommend else set(data.feature_names)
        )
        unknown = sorted(checks.recorded() - recordable)
        if unknown:
            raise ValueError(
                f"checks.minimum records name {unknown}, not "
                f"{'declared columns' if data.forecast or data.recommend else kind}"
            )
        for m in checks.minimum:
            if (m.expect_in_top_k is not None) != (data.recommend is not None):
                raise ValueError(
                    f"checks.minimum {m.name!r}: expect_in_top_k is for a "
                    "recommendation model, and the only answer one checks"
                )
        for i, cut in enumerate(checks.slices):
            if cut.column not in data.columns:
                raise ValueError(
                    f"checks.slices[{i}].column {cut.column!r} is not a declared column"
                )
            if cut.metric is not None and (
                cut.metric not in self.metrics or not cut.metric.startswith("valid_")
            ):
                scored = sorted(m for m in self.metrics if m.startswith("valid_"))
                raise ValueError(
                    f"checks.slices[{i}].metric {cut.metric!r} is not a metric "
                    f"of a {data.task} model on rows; use one of "
                    f"{', '.join(scored)}"
                )
        probabilities = task_of(data.task).probabilities
        values = data.columns[data.label].values
        for i, d in enumerate(checks.directional):
            if probabilities and d.of_class is None:
                raise ValueError(
                    f"checks.directional[{i}] ({d.name!r}) needs of_class: the "
                    "class whose probability must move"
                )
        named = (
            [("directional", d.of_class) for d in checks.directional]
            + [("minimum", m.of_class) for m in checks.minimum]
            + [("minimum", m.expect_class) for m in checks.minimum]
        )
        for key, value in named:
            if value is None:
                continue
            if not probabilities:
                raise ValueError(
                    f"checks.{key}: {value!r} names a class, but a {data.task} "
                    "model predicts a value (use expect_min/expect_max)"
                )
            if values and value not in [str(v) for v in values]:
                raise ValueError(
                    f"checks.{key}: {value!r} is not a value of the label "
                    f"{data.label!r} ({', '.join(map(str, values))})"
                )
        return self

    def check_operate(self) -> None:
        """What the operate loop needs from the serve section, checked when a loop starts
        (a pipeline that never operates need not mirror traffic): ConfigError naming the
        keys."""
        op, serve = self.operate, self.serve
        if op.shadow.enabled and serve.mirror_fraction == 0:
            # a canary's answers alone cannot be compared with the champion's: only mirrored
            # records give the agreement the shadow gate needs
            raise ConfigError(
                "operate.shadow.enabled needs serve.mirror_fraction > 0 (the "
                "share of requests the challenger sees in shadow), e.g. 0.01, "
                "also beside a canary_fraction; or set operate.shadow.enabled: "
                "false"
            )
        if (op.shadow.enabled or op.rollback.watch_s > 0) and not serve.log_predictions:
            raise ConfigError(
                "operate.shadow and operate.rollback read the prediction log: "
                "set serve.log_predictions: true"
            )
        if serve.shadow_alias != CHALLENGER:
            raise ConfigError(
                f"serve.shadow_alias is {serve.shadow_alias!r}, but the loop "
                f"registers new models as {CHALLENGER!r}: the replicas would "
                "never shadow them"
            )

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
    def target_metric(self) -> tuple[str, Mode]:
        """The metric that ranks checkpoints and trials, with its direction."""
        metric = self.tune.metric or task_of(self.data.task).default_metric_for(self.data)
        return metric, self.metrics[metric]

    @property
    def gate_metric(self) -> tuple[str, Mode]:
        """The metric the promotion gate compares, with its direction."""
        metric = self.gate.metric or self.target_metric[0]
        return metric, self.metrics[metric]

    @property
    def metrics(self) -> Mapping[str, Mode]:
        """Every metric a run reports, with the direction that is better."""
        return task_of(self.data.task).metrics_for(self.data)

    def with_overrides(self, overrides: dict[str, Any]) -> PipelineConfig:
        """A copy with dotted keys replaced (``{"train.epochs": 3}``), validated again."""
        from rayops.config.loading import set_dotted, validate_config

        raw = self.model_dump()
        for key, value in overrides.items():
            set_dotted(raw, key, value)
        return validate_config(raw)


def _setting_keys(prefix: str, section: type[_Section]) -> list[str]:
    """Every dotted setting under a section (``model.xgboost.max_depth``...)."""
    keys = []
    for name, info in section.model_fields.items():
        nested = info.annotation
        if isinstance(nested, type) and issubclass(nested, _Section):
            keys += _setting_keys(f"{prefix}.{name}", nested)
        else:
            keys.append(f"{prefix}.{name}")
    return keys


def _tunable(key: str) -> bool:
    return key in _setting_keys("model", ModelConfig) + _setting_keys("train", TrainConfig)
