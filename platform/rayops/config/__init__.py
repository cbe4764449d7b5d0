"""The one pipeline config: a YAML file validated by pydantic before any work starts.

Every section has defaults that run on a laptop (local Ray, a local folder as the object
store, a local MLflow store). A wrong key or value fails at load time with a message that
names the key, the value and what is allowed.
"""

from rayops.config.base import StorageConfig, is_uri
from rayops.config.checks import ChecksConfig
from rayops.config.columns import DATETIME_PARTS, ColumnSpec, ColumnType, DatetimePart
from rayops.config.data import DataConfig
from rayops.config.forecast import ForecastConfig, duration_seconds
from rayops.config.gate import GateConfig
from rayops.config.loading import load_config, local_paths, parse_overrides, validate_config
from rayops.config.monitor import MonitorConfig
from rayops.config.operate import OperateConfig, RollbackConfig, ShadowGateConfig
from rayops.config.pipeline import PipelineConfig
from rayops.config.recommend import RecommendConfig
from rayops.config.serving import AutoscalingConfig, ServeConfig, TrackingConfig
from rayops.config.training import (
    ChoiceDim,
    LogUniformDim,
    ModelConfig,
    RandIntDim,
    SchedulerConfig,
    SearchDim,
    TrainConfig,
    TuneConfig,
    UniformDim,
)

__all__ = [
    "DATETIME_PARTS",
    "AutoscalingConfig",
    "ChecksConfig",
    "ChoiceDim",
    "ColumnSpec",
    "ColumnType",
    "DataConfig",
    "DatetimePart",
    "ForecastConfig",
    "GateConfig",
    "LogUniformDim",
    "ModelConfig",
    "MonitorConfig",
    "OperateConfig",
    "PipelineConfig",
    "RandIntDim",
    "RecommendConfig",
    "RollbackConfig",
    "SchedulerConfig",
    "SearchDim",
    "ServeConfig",
    "ShadowGateConfig",
    "StorageConfig",
    "TrackingConfig",
    "TrainConfig",
    "TuneConfig",
    "UniformDim",
    "duration_seconds",
    "is_uri",
    "load_config",
    "local_paths",
    "parse_overrides",
    "validate_config",
]
