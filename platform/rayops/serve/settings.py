"""What a replica is given: the serve section itself, where the registry and the prediction
log are, and the plugins to import; plain data so Serve can ship it to any node."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rayops.config import PipelineConfig, ServeConfig, StorageConfig, TrackingConfig
from rayops.errors import ServeError
from rayops.serve.prediction_log import FEEDBACK_SCHEMA, AppendLog, PredictionLog, log_locations
from rayops.storage import root_of

# Credentials stay behind: a replica reads them from its node's environment.
SECRETS = {"access_key_id", "secret_access_key", "session_token"}


class ReplicaSettings(BaseModel):
    """A replica's settings (see :func:`replica_settings`)."""

    model_config = ConfigDict(extra="forbid")
    serve: ServeConfig = Field(default_factory=ServeConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    model_name: str
    log_storage: StorageConfig | None = Field(
        None, description="Where the prediction log is (no credentials); None: no log."
    )
    log_table: str = Field("", description="The log's table name (the pipeline's).")
    data_storage: StorageConfig | None = Field(
        None,
        description="Where the curated dataset is (no credentials): a forecast "
        "request without history reads the series' latest observations there.",
    )
    dataset: str = Field("", description="The curated dataset's name.")
    plugins: list[str] = Field(default_factory=list, description="model.plugins")


def replica_settings(cfg: PipelineConfig) -> dict[str, Any]:
    """The settings of ``cfg``'s replicas, as plain data."""
    storage = StorageConfig.model_validate(cfg.storage.model_dump(exclude=SECRETS))
    return ReplicaSettings(
        serve=cfg.serve,
        tracking=cfg.tracking,
        model_name=cfg.model_name,
        log_storage=storage if cfg.serve.log_predictions else None,
        log_table=cfg.name,
        data_storage=storage,
        dataset=cfg.dataset_name,
        plugins=list(cfg.model.plugins),
    ).model_dump(mode="json")


def read_token(serve: ServeConfig) -> str | None:
    """The bearer token from the named environment variable or file, if configured."""
    if serve.auth_token_env:
        token = os.environ.get(serve.auth_token_env, "").strip()
        if not token:
            raise ServeError(
                f"serve.auth_token_env names {serve.auth_token_env!r}, which "
                "is unset or empty on this node"
            )
        return token
    if serve.auth_token_file:
        token = Path(serve.auth_token_file).read_text().strip()
        if not token:
            raise ServeError(f"serve.auth_token_file {serve.auth_token_file!r} is empty")
        return token
    return None


def prediction_log(settings: ReplicaSettings) -> tuple[PredictionLog | None, AppendLog | None]:
    """The replica's prediction log and feedback queue, when the config keeps a log."""
    if settings.log_storage is None:
        return None, None
    predictions, feedback = log_locations(root_of(settings.log_storage), settings.log_table)
    serve = settings.serve
    every = serve.log_flush_interval_s
    return (
        PredictionLog(
            predictions, serve.log_sample_rate, serve.log_queue_rows, flush_interval_s=every
        ),
        AppendLog(feedback, FEEDBACK_SCHEMA, serve.log_queue_rows, flush_interval_s=every),
    )
