"""The Serve deployment: a replica that serves the model an MLflow alias points to.

Each replica loads the aliased version (weights and JSON, nothing unpickled), builds its API
from that model's schema, merges concurrent requests into one vectorized model call
(``@serve.batch``), and polls the alias: when it moves (``rayops promote``, ``rayops
rollback`` or the MLflow UI) the replica loads the new version beside the old one and
swaps in one assignment, so no request fails during an update.
"""

import asyncio
import datetime as dt
import itertools
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from ray import serve

from rayops import tracking
from rayops.config import StorageConfig, TrackingConfig
from rayops.errors import DataError, ModelFilesMissing, ServeError, TrainingError
from rayops.predict import Predictor
from rayops.serve.app import create_app
from rayops.serve.metrics import ServeMetrics
from rayops.serve.prediction_log import (
    FEEDBACK_SCHEMA,
    AppendLog,
    PredictionLog,
    feedback_row,
    log_locations,
)
from rayops.serve.schema import AliasState, Health, ModelInfo, record_model
from rayops.storage import root_of

logger = logging.getLogger(__name__)


class ReplicaSettings(BaseModel):
    """What a replica needs; plain data so Serve can ship it to any node."""

    model_config = ConfigDict(extra="forbid")
    tracking: dict[str, Any]
    model_name: str
    alias: str
    max_records: int
    max_batch_size: int
    batch_wait_timeout_s: float
    max_body_bytes: int
    poll_interval_s: float
    registry_stale_after_s: float
    auth_token_env: str | None = None
    auth_token_file: str | None = None
    # the prediction log: where (storage settings without secrets), how much
    log_storage: dict[str, Any] | None = None
    log_table: str = ""
    log_sample_rate: float = 1.0
    log_queue_rows: int = 10_000


@dataclass(frozen=True)
class LoadedModel:
    predictor: Predictor
    info: ModelInfo


def read_token(settings: ReplicaSettings) -> str | None:
    """The bearer token from the named environment variable or file, if configured."""
    if settings.auth_token_env:
        token = os.environ.get(settings.auth_token_env, "").strip()
        if not token:
            raise ServeError(f"serve.auth_token_env names {settings.auth_token_env!r}, which "
                             "is unset or empty on this node")
        return token
    if settings.auth_token_file:
        token = Path(settings.auth_token_file).read_text().strip()
        if not token:
            raise ServeError(f"serve.auth_token_file {settings.auth_token_file!r} is empty")
        return token
    return None


class ModelServer:
    """One replica."""

    log: PredictionLog | None = None  # set in __init__ when the config keeps a log
    labels: AppendLog | None = None  # the feedback table's queue, beside the log

    async def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = ReplicaSettings.model_validate(settings)
        self._tracking = TrackingConfig.model_validate(self.settings.tracking)
        self.registry_ok_at: float | None = None  # monotonic time of the last answer
        self.registry_error: str | None = None
        self.alias_target: str | None = None
        self.stats: Counter[str] = Counter()
        self.refused: dict[str, str] = {}  # version -> why this replica cannot serve it
        registered = await asyncio.to_thread(self._resolve)
        self.model = await asyncio.to_thread(self._load, registered)
        self.record_model = record_model(self.model.predictor.schema,
                                         self.model.predictor.preprocessor.label)
        self.max_records = self.settings.max_records
        self.max_body_bytes = self.settings.max_body_bytes
        self.token = read_token(self.settings)
        self.metrics = ServeMetrics()
        self.log, self.labels = prediction_log(self.settings)
        self.predict_batch.set_max_batch_size(self.settings.max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)
        if self.settings.poll_interval_s > 0:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        logger.info("Replica serving %s v%s (@%s)", self.model.info.name,
                    self.model.info.version, self.settings.alias)

    def _resolve(self) -> tracking.RegisteredModel:
        """Where the alias points now; remembers when the registry last answered."""
        try:
            registered = tracking.resolve_alias(self._tracking, self.settings.model_name,
                                                self.settings.alias)
        except Exception as exc:
            self.registry_error = str(exc)
            raise
        self.registry_ok_at, self.registry_error = time.monotonic(), None
        self.alias_target = registered.version
        return registered

    def _load(self, registered: tracking.RegisteredModel) -> LoadedModel:
        self.stats["model_downloads"] += 1
        predictor = Predictor.from_registry(self._tracking, registered)
        info = ModelInfo(name=registered.name, version=registered.version,
                         alias=self.settings.alias, run_id=registered.run_id)
        return LoadedModel(predictor, info)

    # ------------------------------------------------------------------ model updates

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            failing = self.registry_error is not None
            try:
                await asyncio.to_thread(self.refresh)
            except Exception as exc:
                if not failing:  # one line when the outage starts, not one per poll
                    logger.warning("Checking %s@%s failed; still serving v%s until it "
                                   "answers: %s", self.settings.model_name,
                                   self.settings.alias, self.model.info.version, exc)
            else:
                if failing:
                    logger.info("The registry answers again (%s@%s)",
                                self.settings.model_name, self.settings.alias)

    def refresh(self) -> bool:
        """Swap in the version the alias points to now, if it moved. True if swapped.

        A version that cannot be served here (other input schema, files gone, not a rayops
        bundle) is refused once: logged, shown in /health and /metadata, never downloaded
        again. A registry or store that does not answer is retried at the next poll."""
        registered = self._resolve()
        version = registered.version
        if version == self.model.info.version or version in self.refused:
            return False
        try:
            candidate = self._load(registered)
        except (ModelFilesMissing, TrainingError) as exc:
            return self._refuse(version, str(exc))
        except Exception as exc:  # the store did not answer: tried again at the next poll
            self.registry_error = f"cannot download v{version}: {exc}"
            raise
        if candidate.predictor.schema != self.model.predictor.schema:
            return self._refuse(version, f"expects other inputs than v{self.model.info.version}"
                                         "; redeploy to serve it")
        self.model = candidate  # one assignment: in-flight batches keep the old model
        logger.info("Now serving %s v%s (@%s)", registered.name, version, self.settings.alias)
        return True

    def _refuse(self, version: str, reason: str) -> bool:
        self.refused[version] = reason
        logger.error("Not serving %s v%s (@%s points to it): %s; still serving v%s",
                     self.settings.model_name, version, self.settings.alias, reason,
                     self.model.info.version)
        return False

    # ------------------------------------------------------------------ predictions

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict_batch(self, requests: list[list[dict[str, Any]]]
                            ) -> list[dict[str, Any] | DataError]:
        """One validation, transform and model call for every request in the batch."""
        model = self.model
        self.metrics.batch_size.observe(len(requests))
        self.stats["batches"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(requests))
        try:
            predictions = model.predictor.predict_records(
                list(itertools.chain.from_iterable(requests)))
        except DataError:  # find whose records failed; the others still get answers
            return [self._one(model, records) for records in requests]
        info = model.info.model_dump()
        out: list[dict[str, Any] | DataError] = []
        start = 0
        for records in requests:
            out.append({"model": info, "predictions": predictions[start:start + len(records)]})
            start += len(records)
        return out

    @staticmethod
    def _one(model: LoadedModel, records: list[dict[str, Any]]) -> dict[str, Any] | DataError:
        try:
            return {"model": model.info.model_dump(),
                    "predictions": model.predictor.predict_records(records)}
        except DataError as exc:
            return exc

    async def predict(self, records: list[dict[str, Any]], request_id: str | None = None
                      ) -> dict[str, Any]:
        started = time.perf_counter()
        if self.settings.max_batch_size == 1:  # batching off: no queue hop
            result = self._one(self.model, records)
        else:
            result = await self.predict_batch(records)
        if isinstance(result, DataError):
            raise result
        self.stats["requests"] += 1
        self.stats["records"] += len(records)
        if self.log is not None:
            info = result["model"]
            self.log.record(request_id, info["name"], info["version"], records,
                            result["predictions"], (time.perf_counter() - started) * 1e3)
        return {**result, "request_id": request_id}

    def feedback(self, labels: list[dict[str, Any]]) -> dict[str, int] | None:
        """Queue true labels for the feedback table (None: this deployment logs nothing)."""
        if self.labels is None:
            return None
        now = dt.datetime.now(dt.UTC)
        accepted = sum(self.labels.put(feedback_row(item["request_id"], item["record_index"],
                                                    item["label"], now)) for item in labels)
        return {"accepted": accepted, "dropped": len(labels) - accepted}

    def __del__(self) -> None:
        """Serve's graceful shutdown: what the logs hold is written first."""
        for log in (self.log, self.labels):
            if log is not None:
                log.close()

    # ------------------------------------------------------------------ introspection

    def metadata(self) -> dict[str, Any]:
        model = self.model
        meta = model.predictor.bundle.meta
        return {"model": model.info.model_dump(), "alias_state": self.alias_state(),
                "task": model.predictor.task, "family": model.predictor.bundle.family,
                "dataset": meta.get("dataset"), "target_metric": meta.get("target_metric"),
                "metrics": {k: v for k, v in meta.get("metrics", {}).items()
                            if k.startswith("valid_")},
                "input_schema": self.record_model.model_json_schema(),
                "served": dict(self.stats) | self.log_counts()}

    def log_counts(self) -> dict[str, int]:
        """The prediction log's rows: queued (sampled), dropped, written, failed writes."""
        if self.log is None:
            return {}
        counts = {f"log_{k}": v for k, v in self.log.counts.items()}
        if self.labels is not None:
            counts |= {f"feedback_{k}": v for k, v in self.labels.counts.items()}
        return counts

    def alias_state(self) -> AliasState:
        checked = self.registry_ok_at
        ago = None if checked is None else round(time.monotonic() - checked, 1)
        stale = ago is None or ago > self.settings.registry_stale_after_s
        return AliasState(alias=self.settings.alias, target_version=self.alias_target,
                          served_version=self.model.info.version, not_served=self.refused,
                          registry_reachable=not stale, registry_checked_s_ago=ago,
                          registry_error=self.registry_error)

    def health(self) -> dict[str, Any]:
        """Always 200 while the replica can answer; ``degraded`` when the registry has not
        answered for ``serve.registry_stale_after_s`` or the alias points to a version this
        replica does not serve."""
        state = self.alias_state()
        behind = state.target_version != state.served_version
        status = "degraded" if behind or not state.registry_reachable else "ok"
        return Health(status=status, model=self.model.info, alias=state).model_dump()

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.metrics.observe(route, status, seconds)

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self)


def replica_settings(cfg: Any) -> dict[str, Any]:
    s = cfg.serve
    return ReplicaSettings(
        tracking=cfg.tracking.model_dump(), model_name=cfg.model_name, alias=s.model_alias,
        max_records=s.max_records_per_request, max_batch_size=s.max_batch_size,
        batch_wait_timeout_s=s.batch_wait_timeout_s, max_body_bytes=s.max_body_bytes,
        poll_interval_s=s.model_poll_interval_s,
        registry_stale_after_s=s.registry_stale_after_s, auth_token_env=s.auth_token_env,
        auth_token_file=s.auth_token_file,
        log_storage=cfg.storage.model_dump(
            mode="json", exclude={"access_key_id", "secret_access_key", "session_token"},
        ) if s.log_predictions else None,
        log_table=cfg.name, log_sample_rate=s.log_sample_rate,
        log_queue_rows=s.log_queue_rows,
    ).model_dump()


def prediction_log(settings: ReplicaSettings
                   ) -> tuple[PredictionLog | None, AppendLog | None]:
    """The replica's prediction log and feedback queue, when the config keeps a log."""
    if settings.log_storage is None:
        return None, None
    predictions, feedback = log_locations(root_of(StorageConfig.model_validate(
        settings.log_storage)), settings.log_table)
    return (PredictionLog(predictions, settings.log_sample_rate, settings.log_queue_rows),
            AppendLog(feedback, FEEDBACK_SCHEMA, settings.log_queue_rows))


def wait_ready(url: str, timeout_s: float = 120.0) -> None:
    """Block until ``{url}/health`` answers 200."""
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise ServeError(f"{url}/health did not answer 200 within {timeout_s:.0f}s")
