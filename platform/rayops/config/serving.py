"""The tracking and serve sections."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from rayops.config.base import _absolute_local, _Section, is_uri

# The registry aliases rayops moves: what serving answers with, and what passed the gate
# beside it (rayops.tracking names them too).
CHAMPION = "champion"
CHALLENGER = "challenger"


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
    min_replicas: int = Field(1, ge=0, description="Replicas kept when traffic is low.")
    max_replicas: int = Field(2, ge=1, description="Most replicas under load.")
    target_ongoing_requests: float = Field(
        2.0, gt=0.0, description="Requests in flight per replica that Serve scales towards."
    )
    upscale_delay_s: float = Field(
        10.0, ge=0.0, description="How long load must stay high before a replica is added."
    )
    downscale_delay_s: float = Field(
        60.0, ge=0.0, description="How long load must stay low before a replica is removed."
    )
    look_back_period_s: float = Field(
        30.0,
        gt=0.0,
        description="Window over which replicas' ongoing requests are averaged "
        "before a scaling decision (Serve's default: 30 s).",
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})"
            )
        return self


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: may resolve anywhere
        return False


class ServeConfig(_Section):
    app_name: str = Field("rayops", description="Name of the Serve application.")
    route_prefix: str = Field("/", description="HTTP prefix of the API.")
    host: str = Field("127.0.0.1", description="Interface the HTTP proxy binds to.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the Serve proxy.")
    model_alias: str = Field(CHAMPION, description="Registry alias of the model to serve.")
    cpus_per_replica: float = Field(0.5, gt=0.0, description="CPUs each replica reserves.")
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig)
    max_ongoing_requests: int = Field(
        64, ge=1, description="Requests one replica works on at once (>= max_batch_size)."
    )
    max_batch_size: int = Field(32, ge=1, description="Requests merged into one model call.")
    batch_wait_timeout_s: float = Field(0.005, ge=0.0, description="Wait to fill a batch.")
    max_records_per_request: int = Field(1000, ge=1, description="Records one request may send.")
    max_queued_requests: int = Field(
        200,
        ge=-1,
        description="Requests waiting for a replica beyond which new ones get 503 at once "
        "(-1: unbounded).",
    )
    request_timeout_s: float = Field(30.0, gt=0.0, description="End-to-end HTTP timeout (408).")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body (413).")
    access_log: bool = Field(
        True,
        description="Each replica logs a line per request (Ray Serve's access log); "
        "off spares the log pipeline at high request rates.",
    )
    user_code_thread: bool = Field(
        False,
        description="Run the app's code on a thread of its own in each replica (Ray "
        "Serve's default), beside the loop that takes requests. Off (rayops' default), both "
        "share one loop: no hand-off between two threads and the GIL per request (1.3-1.5x "
        "the requests a second on a small model, bench_serve.py). On for a model whose "
        "calls take seconds, so that a replica answers Serve's health checks meanwhile.",
    )
    model_poll_interval_s: float = Field(
        5.0,
        ge=0.0,
        description="How often replicas check where model_alias points; a move switches them "
        "to the new version without dropping requests (0: never).",
    )
    log_predictions: bool = Field(
        True,
        description="Append served records and answers to the prediction log, "
        "{storage.root}/predictions/{name} (a Delta table), off the request path.",
    )
    log_sample_rate: float = Field(
        1.0, ge=0.0, le=1.0, description="Share of requests the prediction log keeps."
    )
    log_queue_rows: int = Field(
        20_000,
        ge=1,
        description="Rows a replica holds for the prediction log; beyond, "
        "rows are dropped and counted, never a request slowed or failed. Half of them "
        "waiting are appended at once, without waiting for log_flush_interval_s.",
    )
    log_flush_interval_s: float = Field(
        5.0,
        gt=0.0,
        description="How often a replica appends its queued log rows to the "
        "table (each append is one commit, ~20-80 ms of CPU); a clean shutdown writes the "
        "rest.",
    )
    shadow_alias: str = Field(
        CHALLENGER,
        description="Registry alias of the model that shadows (and, with "
        "canary_fraction, partly serves) beside model_alias's, when it names another "
        "version.",
    )
    mirror_fraction: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of requests also sent to the shadow model "
        "after the answer: its answers go to the prediction log, never to the client.",
    )
    canary_fraction: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of request keys the shadow model answers "
        "(sticky: a hash of the X-Rayops-Key header, else of the request id); on an error "
        "the model_alias model answers instead.",
    )
    max_mirror_in_flight: int = Field(
        4,
        ge=1,
        description="Mirrored requests a replica works on at once; beyond, a mirror "
        "is skipped and counted.",
    )
    registry_stale_after_s: float = Field(
        60.0,
        gt=0.0,
        description="A replica whose alias look-ups have failed for this long reports "
        "status 'degraded' in /health (it keeps serving its model).",
    )
    auth_token_env: str | None = Field(
        None,
        description="Name of an environment variable holding a bearer token to require "
        "(the token itself never goes in this file).",
    )
    auth_token_file: str | None = Field(
        None,
        description="Path of a file holding the bearer token (read by each replica).",
    )

    @field_validator("route_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with '/'")
        return v

    @model_validator(mode="after")
    def _token_off_loopback(self) -> ServeConfig:
        """An API reachable from other machines must ask for a bearer token."""
        if not _is_loopback(self.host) and not (self.auth_token_env or self.auth_token_file):
            raise ValueError(
                f"host {self.host!r} is reachable from other machines: set auth_token_env or "
                "auth_token_file so that requests need a bearer token (or keep host "
                "127.0.0.1 and reach the API through a tunnel or a load balancer that "
                "authenticates)"
            )
        return self

    @model_validator(mode="after")
    def _shadow(self) -> ServeConfig:
        if self.shadow_alias == self.model_alias:
            raise ValueError(
                f"shadow_alias {self.shadow_alias!r} is model_alias: the shadow "
                "must be another alias"
            )
        if self.mirror_fraction > 0 and not self.log_predictions:
            raise ValueError(
                f"mirror_fraction {self.mirror_fraction} needs log_predictions: "
                "true (a mirror's answers go only to the prediction log)"
            )
        return self

    @model_validator(mode="after")
    def _batching(self) -> ServeConfig:
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) is below max_batch_size "
                f"({self.max_batch_size}): a replica could never fill a batch"
            )
        return self
