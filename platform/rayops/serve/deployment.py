"""The Serve deployment: a replica that answers with the model an MLflow alias points to.

Each replica follows the aliases (:mod:`.aliases`: the served version, the one before it,
the shadow), routes each request (:mod:`.routing`: served model, canary, fallback, mirror),
builds its API from the served model's schema (:mod:`.app`), merges concurrent requests into
one vectorized model call (``@serve.batch``) and logs what it answered.
"""

import asyncio
import datetime as dt
import itertools
import logging
import time
from collections import Counter
from typing import Any

from ray import serve

from rayops.errors import LabelsNotStored, ServeError, one_line
from rayops.families import import_plugins
from rayops.serve.aliases import AliasFollower, LoadedModel
from rayops.serve.app import create_app
from rayops.serve.bodies import (
    AliasState,
    Health,
    RecommendRequest,
    forecast_model,
    record_model,
)
from rayops.serve.forecasting import Forecasting
from rayops.serve.history import CuratedHistory
from rayops.serve.prediction_log import AppendLog, PredictionLog, feedback_row
from rayops.serve.prometheus import ServeMetrics
from rayops.serve.recommending import Recommending
from rayops.serve.routing import Mirror, ModelFailed, fallback, in_share, route
from rayops.serve.settings import ReplicaSettings, prediction_log, read_token

logger = logging.getLogger(__name__)

# How long /feedback waits for its labels' commit before answering 503 (a commit takes
# 20-80 ms; a store that does not answer is retried by pyarrow and delta-rs meanwhile).
FEEDBACK_TIMEOUT_S = 30.0


class ModelServer(Forecasting, Recommending):
    """One replica: request handling over the models its :class:`AliasFollower` holds."""

    log: PredictionLog | None = None  # set in __init__ when the config keeps a log
    labels: AppendLog | None = None  # the feedback table's queue, beside the log
    mirror: Mirror | None = None  # requests copied to the shadow (with a log only)

    async def __init__(self, settings: dict[str, Any]) -> None:  # type: ignore[misc]
        self.settings = ReplicaSettings.model_validate(settings)
        import_plugins(self.settings.plugins)  # their families, before a model loads
        serve_cfg = self.settings.serve
        self.stats: Counter[str] = Counter()
        self.aliases = AliasFollower(self.settings, self.stats)
        await self.aliases.start()
        self.in_flight = 0  # requests this replica is working on (counted by the app)
        served = self.aliases.model.predictor
        self.record_model = record_model(served.schema, served.preprocessor.label)
        series = served.preprocessor.series  # a forecaster answers /forecast instead
        self.forecast_body = (
            None
            if series is None
            else forecast_model(served.schema, series["layout"], serve_cfg.max_records_per_request)
        )
        self.request_body = self.forecast_body or (
            RecommendRequest if served.preprocessor.interactions is not None else self.record_model
        )
        self.history = CuratedHistory(
            self.settings.data_storage,
            self.settings.dataset,
            serve_cfg.model_poll_interval_s or 30.0,
        )
        self.task = served.task  # fixed: a version of other inputs is refused
        self.max_records = serve_cfg.max_records_per_request
        self.max_body_bytes = serve_cfg.max_body_bytes
        self.token = read_token(serve_cfg)
        self.metrics = ServeMetrics()
        self.log, self.labels = prediction_log(self.settings)
        if self.log is not None:
            self.mirror = Mirror(self.log, serve_cfg.max_mirror_in_flight, self.stats)
        for batched in (self.predict_batch, self.forecast_batch, self.recommend_batch):
            batched.set_max_batch_size(serve_cfg.max_batch_size)  # type: ignore[union-attr]
            batched.set_batch_wait_timeout_s(serve_cfg.batch_wait_timeout_s)  # type: ignore[union-attr]
        if serve_cfg.model_poll_interval_s > 0:
            self._watcher = asyncio.get_running_loop().create_task(self.aliases.watch())
        logger.info(
            "Replica serving %s v%s (@%s)",
            self.model.info.name,
            self.model.info.version,
            serve_cfg.model_alias,
        )

    @property
    def model(self) -> LoadedModel:
        """The served model (what the alias points to, once loaded)."""
        return self.aliases.model

    @property
    def shadow(self) -> LoadedModel | None:
        return self.aliases.shadow

    def refresh(self) -> bool:
        return self.aliases.refresh()

    # ------------------------------------------------------------------ predictions

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict_batch(
        self, requests: list[list[dict[str, Any]]]
    ) -> list[dict[str, Any] | ModelFailed]:
        """One transform and model call for every request in the batch (the records were
        validated by the request schema: nothing here refuses a record)."""
        model = self.model
        self.metrics.batch_size.observe(len(requests))
        self.stats["batches"] += 1
        self.stats["batched_requests"] += len(requests)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(requests))
        try:
            predictions = model.predictor.predict_valid(
                list(itertools.chain.from_iterable(requests))
            )
        except Exception:
            # One request's records must not fail the others batched with it (nor count as
            # their model errors): each is answered alone, and only the failing one fails.
            self.stats["batches_split"] += 1
            return [self._one(model, records) for records in requests]
        info = model.info.model_dump()
        out: list[dict[str, Any] | ModelFailed] = []
        start = 0
        for records in requests:
            out.append({"model": info, "predictions": predictions[start : start + len(records)]})
            start += len(records)
        return out

    @staticmethod
    def _one(model: LoadedModel, records: list[dict[str, Any]]) -> dict[str, Any] | ModelFailed:
        try:
            return {
                "model": model.info.model_dump(),
                "predictions": model.predictor.predict_valid(records),
            }
        except Exception as exc:
            return ModelFailed(model, exc)

    async def predict(
        self, records: list[dict[str, Any]], request_id: str | None = None, key: str | None = None
    ) -> dict[str, Any]:
        """The served model's answer (the canary's, for a canary key). A model error other
        than bad input is answered by the model served before (the previous champion after
        a swap, the champion for a canary) and logged; a mirror to the shadow runs after
        the answer, off the request's path."""
        started = time.perf_counter()
        shadow = self.shadow
        model, role = route(self.aliases, key or request_id)
        # A request alone in the replica is answered at once (see has_company).
        try:
            result = await self._answer(
                model, records, batched=role == "champion" and await self.has_company()
            )
        except ModelFailed as failure:  # the model that failed (a batch's may be newer)
            failed = failure.model
            self._failed(failed, role, records, request_id, failure.error, started)
            instead = fallback(self.aliases, failed)
            if instead is None:
                raise failure.error from None
            model, role = instead, "fallback"
            result = await self._answer(model, records, batched=False)
        self.stats["requests"] += 1
        self.stats["records"] += len(records)
        if role != "champion":
            self.stats[f"{role}_answers"] += 1
        mirrored = (
            shadow is not None
            and role == "champion"
            and self.mirror is not None
            and in_share(None, self.settings.serve.mirror_fraction)
        )
        if self.log is not None:
            info = result["model"]
            self.log.record(
                request_id,
                info["name"],
                info["version"],
                records,
                result["predictions"],
                (time.perf_counter() - started) * 1e3,
                role,
                sampled=mirrored or None,
            )
        if mirrored:
            assert shadow is not None and self.mirror is not None
            self.mirror.send(shadow, records, request_id)
        return {**result, "request_id": request_id}

    async def _answer(
        self, model: LoadedModel, records: list[dict[str, Any]], batched: bool
    ) -> dict[str, Any]:
        if batched:  # has_company: batching is on and others are in flight
            result = await self.predict_batch(records)
        else:  # batching off, or a model other than the served one: no queue hop
            self.metrics.batch_size.observe(1)  # a model call too, of one request
            result = self._one(model, records)
        if isinstance(result, ModelFailed):
            raise result
        return result

    def _failed(
        self,
        model: LoadedModel,
        role: str,
        records: list[dict[str, Any]],
        request_id: str | None,
        exc: Exception,
        started: float,
    ) -> None:
        self.stats[f"{role}_errors"] += 1
        logger.error(
            "%s v%s (%s) failed on request %s: %s",
            model.info.name,
            model.info.version,
            role,
            request_id,
            one_line(exc),
        )
        if self.log is not None:
            self.log.record(
                request_id,
                model.info.name,
                model.info.version,
                records,
                None,
                (time.perf_counter() - started) * 1e3,
                role,
                one_line(exc),
                sampled=True,
            )

    async def feedback(self, labels: list[dict[str, Any]]) -> dict[str, int] | None:
        """Store true labels in the feedback table; returns once they are stored (one commit
        shared by every request waiting then), so a 202 is never lost with the replica.
        None: this deployment logs nothing. LabelsNotStored when they could not be."""
        if self.labels is None:
            return None
        now = dt.datetime.now(dt.UTC)
        rows = [
            feedback_row(item["request_id"], item["record_index"], item["label"], now)
            for item in labels
        ]
        try:
            stored = await asyncio.wait_for(
                asyncio.wrap_future(self.labels.put_stored(rows)), FEEDBACK_TIMEOUT_S
            )
        except Exception as exc:
            raise LabelsNotStored(
                f"{len(rows)} label(s) not stored: {one_line(exc)}; "
                "send them again (a label sent twice counts once)"
            ) from None
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
        return {
            "model": model.info.model_dump(),
            "alias_state": self.alias_state(),
            "task": model.predictor.task,
            "family": model.predictor.bundle.family,
            "dataset": meta.get("dataset"),
            "target_metric": meta.get("target_metric"),
            "metrics": {k: v for k, v in meta.get("metrics", {}).items() if k.startswith("valid_")},
            "input_schema": self.request_body.model_json_schema(),
            "shadow": self.shadow_state(),
            "served": dict(self.stats) | self.log_counts(),
        }

    def shadow_state(self) -> dict[str, Any] | None:
        """The model beside the served one, and the share of traffic it sees."""
        shadow = self.shadow
        if shadow is None:
            return None
        return {
            "model": shadow.info.model_dump(),
            "mirror_fraction": self.settings.serve.mirror_fraction,
            "canary_fraction": self.settings.serve.canary_fraction,
        }

    def log_counts(self) -> dict[str, int]:
        """The prediction log's rows: queued (sampled), dropped, written, failed writes."""
        if self.log is None:
            return {}
        counts = {f"log_{k}": v for k, v in self.log.counts.items()}
        if self.labels is not None:
            counts |= {f"feedback_{k}": v for k, v in self.labels.counts.items()}
        return counts

    def alias_state(self) -> AliasState:
        return self.aliases.alias_state()

    def health(self) -> dict[str, Any]:
        """Always 200 while the replica can answer; ``degraded`` when the registry has not
        answered for ``serve.registry_stale_after_s`` or the alias points to a version this
        replica does not serve. The route is open (load balancers probe it without a
        token), so it names no error: those (registry address, store paths) are in
        /metadata, behind the token, and in the replica's log."""
        state = self.alias_state()
        behind = state.target_version != state.served_version
        status = "degraded" if behind or not state.registry_reachable else "ok"
        shown = state.model_copy(
            update={
                "not_served": dict.fromkeys(state.not_served, "refused: see /metadata"),
                "registry_error": None
                if state.registry_error is None
                else ("the registry did not answer: see /metadata or the replica's log"),
            }
        )
        return Health(status=status, model=self.model.info, alias=shown).model_dump()

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.metrics.observe(route, status, seconds)

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self)


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
