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
import random
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from ray import serve

from rayops import tracking
from rayops.config import StorageConfig, TrackingConfig
from rayops.errors import (
    LabelsNotStored,
    ModelFilesMissing,
    ServeError,
    TrainingError,
    one_line,
    redact,
)
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
    log_flush_interval_s: float = 5.0
    # the shadow / canary beside the served model
    shadow_alias: str = "challenger"
    mirror_fraction: float = 0.0
    canary_fraction: float = 0.0
    max_mirror_in_flight: int = 4


@dataclass(frozen=True)
class LoadedModel:
    predictor: Predictor
    info: ModelInfo


# How long /feedback waits for its labels' commit before answering 503 (a commit takes
# 20-80 ms; a store that does not answer is retried by pyarrow and delta-rs meanwhile).
FEEDBACK_TIMEOUT_S = 30.0


class ModelFailed(Exception):
    """A model raised on valid input (not bad records): which model, and its error."""

    def __init__(self, model: LoadedModel, error: Exception) -> None:
        super().__init__(str(error))
        self.model, self.error = model, error


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
    shadow: LoadedModel | None = None  # shadow_alias's model, when it is another version
    previous: LoadedModel | None = None  # the model served before the last swap

    async def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = ReplicaSettings.model_validate(settings)
        self._tracking = TrackingConfig.model_validate(self.settings.tracking)
        self.registry_ok_at: float | None = None  # monotonic time of the last answer
        self.registry_error: str | None = None
        self.alias_target: str | None = None
        self.stats: Counter[str] = Counter()
        self.refused: dict[str, str] = {}  # version -> why this replica cannot serve it
        self.ungated: set[str] = set()  # shadow-alias versions the gate did not pass
        registered = await asyncio.to_thread(self._resolve)
        self.model = await asyncio.to_thread(self._load, registered)
        self._mirrors: set[asyncio.Task[None]] = set()
        self.in_flight = 0  # requests this replica is working on (counted by the app)
        if self.watches_shadow:
            await asyncio.to_thread(self._refresh_shadow)
        self.record_model = record_model(self.model.predictor.schema,
                                         self.model.predictor.preprocessor.label)
        self.task = self.model.predictor.task  # fixed: a version of other inputs is refused
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

    def _load(self, registered: tracking.RegisteredModel, alias: str | None = None
              ) -> LoadedModel:
        self.stats["model_downloads"] += 1
        predictor = Predictor.from_registry(self._tracking, registered)
        info = ModelInfo(name=registered.name, version=registered.version,
                         alias=alias or self.settings.alias, run_id=registered.run_id)
        return LoadedModel(predictor, info)

    @property
    def watches_shadow(self) -> bool:
        return self.settings.mirror_fraction > 0 or self.settings.canary_fraction > 0

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
        again. A registry or store that does not answer is retried at the next poll. The
        shadow alias is followed the same way, after the served one."""
        swapped = self._refresh_served()
        if self.watches_shadow:
            self._refresh_shadow()
        return swapped

    def _refresh_served(self) -> bool:
        registered = self._resolve()
        version = registered.version
        if version == self.model.info.version or version in self.refused:
            return False
        try:
            candidate = self._candidate(registered, self.settings.alias)
        except Exception as exc:  # the store did not answer: tried again at the next poll
            self.registry_error = f"cannot download v{version}: {exc}"
            raise
        if candidate is None:
            return False
        # One assignment: in-flight batches keep the old model, which stays loaded as the
        # fallback while the new one proves itself.
        self.previous, self.model = self.model, candidate
        logger.info("Now serving %s v%s (@%s)", registered.name, version, self.settings.alias)
        return True

    def _refresh_shadow(self) -> None:
        """Follow ``shadow_alias``: load its version beside the served one (None when the
        alias is unset or names the served version). Never fails the served model."""
        alias = self.settings.shadow_alias
        try:
            registered = tracking.alias_or_none(self._tracking, self.settings.model_name, alias)
        except Exception as exc:  # the registry's outage is reported by the served alias
            logger.debug("Cannot read %s@%s: %s", self.settings.model_name, alias, exc)
            return
        if registered is None or registered.version == self.model.info.version:
            self.shadow = None
            return
        if not registered.gated:  # refused, withdrawn, or set by hand to an ungated version
            if registered.version not in self.ungated:
                self.ungated.add(registered.version)
                logger.error("No shadow or canary traffic for %s v%s (@%s points to it): "
                             "the gate did not pass it, or it was withdrawn since",
                             registered.name, registered.version, alias)
            self.shadow = None
            return
        version = registered.version
        if (self.shadow is not None and self.shadow.info.version == version) or \
                version in self.refused:
            return
        try:
            candidate = self._candidate(registered, alias)
        except Exception as exc:
            logger.warning("Cannot load the shadow %s v%s (@%s), tried again at the next "
                           "poll: %s", registered.name, version, alias, exc)
            return
        if candidate is not None:
            self.shadow = candidate
            logger.info("Shadow %s v%s (@%s) beside v%s: mirror %.0f%%, canary %.0f%%",
                        registered.name, version, alias, self.model.info.version,
                        100 * self.settings.mirror_fraction,
                        100 * self.settings.canary_fraction)

    def _candidate(self, registered: tracking.RegisteredModel, alias: str
                   ) -> LoadedModel | None:
        """``registered`` loaded to serve as ``alias`` (the shadow's model when the shadow
        is promoted: no download), or None when this replica refuses it, once: its files
        gone, not a rayops bundle, or other inputs than the served model's. A store that
        does not answer raises: tried again at the next poll."""
        version, shadow = registered.version, self.shadow
        if shadow is not None and shadow.info.version == version:
            candidate = LoadedModel(shadow.predictor,
                                    shadow.info.model_copy(update={"alias": alias}))
        else:
            try:
                candidate = self._load(registered, alias)
            except (ModelFilesMissing, TrainingError) as exc:
                self._refuse(version, str(exc))
                return None
        if candidate.predictor.schema != self.model.predictor.schema:
            self._refuse(version, f"expects other inputs than v{self.model.info.version}; "
                                  "redeploy to serve it")
            return None
        return candidate

    def _refuse(self, version: str, reason: str) -> None:
        self.refused[version] = reason
        logger.error("Not serving %s v%s (@%s points to it): %s; still serving v%s",
                     self.settings.model_name, version, self.settings.alias, reason,
                     self.model.info.version)

    # ------------------------------------------------------------------ predictions

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict_batch(self, requests: list[list[dict[str, Any]]]
                            ) -> list[dict[str, Any] | ModelFailed]:
        """One transform and model call for every request in the batch (the records were
        validated by the request schema: nothing here refuses a record)."""
        model = self.model
        self.metrics.batch_size.observe(len(requests))
        self.stats["batches"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(requests))
        try:
            predictions = model.predictor.predict_valid(
                list(itertools.chain.from_iterable(requests)))
        except Exception:
            # One request's records must not fail the others batched with it (nor count as
            # their model errors): each is answered alone, and only the failing one fails.
            self.stats["batches_split"] += 1
            return [self._one(model, records) for records in requests]
        info = model.info.model_dump()
        out: list[dict[str, Any] | ModelFailed] = []
        start = 0
        for records in requests:
            out.append({"model": info, "predictions": predictions[start:start + len(records)]})
            start += len(records)
        return out

    @staticmethod
    def _one(model: LoadedModel, records: list[dict[str, Any]]
             ) -> dict[str, Any] | ModelFailed:
        try:
            return {"model": model.info.model_dump(),
                    "predictions": model.predictor.predict_valid(records)}
        except Exception as exc:
            return ModelFailed(model, exc)

    async def predict(self, records: list[dict[str, Any]], request_id: str | None = None,
                      key: str | None = None) -> dict[str, Any]:
        """The served model's answer (the canary's, for a canary key). A model error other
        than bad input is answered by the model served before (the previous champion after
        a swap, the champion for a canary) and logged; a mirror to the shadow runs after
        the answer, off the request's path."""
        started = time.perf_counter()
        model, shadow, role = self.model, self.shadow, "champion"
        if shadow is not None and in_share(key or request_id, self.settings.canary_fraction):
            model, role = shadow, "canary"
        # A request alone in the replica is answered at once: a batch would only wait
        # batch_wait_timeout_s for company that is not coming.
        try:
            result = await self._answer(model, records,
                                        batched=role == "champion" and self.in_flight > 1)
        except ModelFailed as failure:  # the model that failed (a batch's may be newer)
            failed = failure.model
            fallback = self.previous if failed is self.model else self.model
            self._failed(failed, role, records, request_id, failure.error, started)
            if fallback is None or fallback is failed:
                raise failure.error from None
            model, role = fallback, "fallback"
            result = await self._answer(model, records, batched=False)
        self.stats["requests"] += 1
        self.stats["records"] += len(records)
        if role != "champion":
            self.stats[f"{role}_answers"] += 1
        mirrored = (shadow is not None and role == "champion" and self.log is not None
                    and in_share(None, self.settings.mirror_fraction))
        if self.log is not None:
            info = result["model"]
            self.log.record(request_id, info["name"], info["version"], records,
                            result["predictions"], (time.perf_counter() - started) * 1e3,
                            role, sampled=mirrored or None)
        if mirrored:
            assert shadow is not None
            self._mirror(shadow, records, request_id)
        return {**result, "request_id": request_id}

    async def _answer(self, model: LoadedModel, records: list[dict[str, Any]],
                      batched: bool) -> dict[str, Any]:
        if batched and self.settings.max_batch_size > 1:
            result = await self.predict_batch(records)
        else:  # batching off, or a model other than the served one: no queue hop
            result = self._one(model, records)
        if isinstance(result, ModelFailed):
            raise result
        return result

    def _failed(self, model: LoadedModel, role: str, records: list[dict[str, Any]],
                request_id: str | None, exc: Exception, started: float) -> None:
        self.stats[f"{role}_errors"] += 1
        logger.error("%s v%s (%s) failed on request %s: %s", model.info.name,
                     model.info.version, role, request_id, one_line(exc))
        if self.log is not None:
            self.log.record(request_id, model.info.name, model.info.version, records, None,
                            (time.perf_counter() - started) * 1e3, role, one_line(exc),
                            sampled=True)

    def _mirror(self, shadow: LoadedModel, records: list[dict[str, Any]],
                request_id: str | None) -> None:
        """Send the request to the shadow in the background; skipped (and counted) when
        ``max_mirror_in_flight`` mirrors are running already."""
        if len(self._mirrors) >= self.settings.max_mirror_in_flight:
            self.stats["mirror_skipped"] += 1
            return
        task = asyncio.get_running_loop().create_task(
            self._shadow_call(shadow, records, request_id))
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)

    async def _shadow_call(self, shadow: LoadedModel, records: list[dict[str, Any]],
                           request_id: str | None) -> None:
        assert self.log is not None
        predictions, error, took_ms = None, None, 0.0
        try:
            predictions, took_ms = await asyncio.to_thread(_timed, shadow.predictor.predict_valid,
                                                           records)
        except Exception as exc:  # a shadow's failure is data for the gate, not an outage
            error = one_line(exc)
            self.stats["shadow_errors"] += 1
        self.stats["mirrored"] += 1
        self.log.record(request_id, shadow.info.name, shadow.info.version, records,
                        predictions, took_ms, "shadow", error, sampled=True)

    async def feedback(self, labels: list[dict[str, Any]]) -> dict[str, int] | None:
        """Store true labels in the feedback table; returns once they are stored (one commit
        shared by every request waiting then), so a 202 is never lost with the replica.
        None: this deployment logs nothing. LabelsNotStored when they could not be."""
        if self.labels is None:
            return None
        now = dt.datetime.now(dt.UTC)
        rows = [feedback_row(item["request_id"], item["record_index"], item["label"], now)
                for item in labels]
        try:
            stored = await asyncio.wait_for(asyncio.wrap_future(self.labels.put_stored(rows)),
                                            FEEDBACK_TIMEOUT_S)
        except Exception as exc:
            raise LabelsNotStored(f"{len(rows)} label(s) not stored: {one_line(exc)}; "
                                  "send them again (a label sent twice counts once)") from None
        return {"accepted": stored}

    def __del__(self) -> None:
        """Serve's graceful shutdown: what the logs hold is written first (mirrors still
        running are not waited for)."""
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
                "shadow": self.shadow_state(),
                "served": dict(self.stats) | self.log_counts()}

    def shadow_state(self) -> dict[str, Any] | None:
        """The model beside the served one, and the share of traffic it sees."""
        shadow = self.shadow
        if shadow is None:
            return None
        return {"model": shadow.info.model_dump(),
                "mirror_fraction": self.settings.mirror_fraction,
                "canary_fraction": self.settings.canary_fraction}

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
                          registry_error=self.registry_error and redact(self.registry_error))

    def health(self) -> dict[str, Any]:
        """Always 200 while the replica can answer; ``degraded`` when the registry has not
        answered for ``serve.registry_stale_after_s`` or the alias points to a version this
        replica does not serve. The route is open (load balancers probe it without a
        token), so it names no error: those (registry address, store paths) are in
        /metadata, behind the token, and in the replica's log."""
        state = self.alias_state()
        behind = state.target_version != state.served_version
        status = "degraded" if behind or not state.registry_reachable else "ok"
        shown = state.model_copy(update={
            "not_served": dict.fromkeys(state.not_served, "refused: see /metadata"),
            "registry_error": None if state.registry_error is None else (
                "the registry did not answer: see /metadata or the replica's log")})
        return Health(status=status, model=self.model.info, alias=shown).model_dump()

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.metrics.observe(route, status, seconds)

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self)


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    """``fn(*args)`` and the milliseconds it took, measured where it runs (a mirror's time
    waiting for a thread is not its model's cost)."""
    started = time.perf_counter()
    return fn(*args), (time.perf_counter() - started) * 1e3


def in_share(key: str | None, fraction: float) -> bool:
    """Whether a request falls in a share of traffic: by a stable hash of ``key`` (the same
    key always lands on the same side), at random without one."""
    if fraction <= 0.0:
        return False
    if fraction >= 1.0:
        return True
    if key is None:
        return random.random() < fraction
    return zlib.crc32(key.encode()) % 10_000 < fraction * 10_000


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
        log_queue_rows=s.log_queue_rows, log_flush_interval_s=s.log_flush_interval_s,
        shadow_alias=s.shadow_alias,
        mirror_fraction=s.mirror_fraction, canary_fraction=s.canary_fraction,
        max_mirror_in_flight=s.max_mirror_in_flight,
    ).model_dump()


def prediction_log(settings: ReplicaSettings
                   ) -> tuple[PredictionLog | None, AppendLog | None]:
    """The replica's prediction log and feedback queue, when the config keeps a log."""
    if settings.log_storage is None:
        return None, None
    predictions, feedback = log_locations(root_of(StorageConfig.model_validate(
        settings.log_storage)), settings.log_table)
    every = settings.log_flush_interval_s
    return (PredictionLog(predictions, settings.log_sample_rate, settings.log_queue_rows,
                          flush_interval_s=every),
            AppendLog(feedback, FEEDBACK_SCHEMA, settings.log_queue_rows,
                      flush_interval_s=every))


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
