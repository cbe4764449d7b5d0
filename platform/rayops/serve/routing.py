"""Which model answers a request: the served one, the canary (a share of traffic, by a
stable hash of the caller's key), or the fallback when a model fails; and the mirror that
sends a share of requests to the shadow off the request's path."""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from collections import Counter
from collections.abc import Callable
from typing import Any

from rayops.errors import one_line
from rayops.predict import Predictor
from rayops.serve.aliases import AliasFollower, LoadedModel
from rayops.serve.prediction_log import PredictionLog


class ModelFailed(Exception):
    """A model raised on valid input (not bad records): which model, and its error."""

    def __init__(self, model: LoadedModel, error: Exception) -> None:
        super().__init__(str(error))
        self.model, self.error = model, error


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


def route(aliases: AliasFollower, key: str | None) -> tuple[LoadedModel, str]:
    """The model that answers a request, and its role: ``canary`` for a key in the canary's
    share while a gated shadow is loaded, else ``champion``."""
    shadow = aliases.shadow
    if shadow is not None and in_share(key, aliases.serve.canary_fraction):
        return shadow, "canary"
    return aliases.model, "champion"


def fallback(aliases: AliasFollower, failed: LoadedModel) -> LoadedModel | None:
    """Who answers when ``failed`` raised on valid input: the model served before the last
    swap (for the served model), or the served model (for a canary); None when nobody."""
    other = aliases.previous if failed is aliases.model else aliases.model
    return None if other is None or other is failed else other


def timed(fn: Any, *args: Any) -> tuple[Any, float]:
    """``fn(*args)`` and the milliseconds it took, measured where it runs (a mirror's time
    waiting for a thread is not its model's cost)."""
    started = time.perf_counter()
    return fn(*args), (time.perf_counter() - started) * 1e3


class Mirror:
    """Requests copied to the shadow in the background, their answers logged with the
    ``shadow`` role: data for the operate loop's shadow gate, never an outage."""

    def __init__(self, log: PredictionLog, max_in_flight: int, stats: Counter[str]) -> None:
        self.log, self.max_in_flight, self.stats = log, max_in_flight, stats
        self.running: set[asyncio.Task[None]] = set()

    def send(
        self,
        shadow: LoadedModel,
        records: list[dict[str, Any]],
        request_id: str | None,
        answers: Callable[[Predictor], list[dict[str, Any]]] | None = None,
    ) -> None:
        """Skipped (and counted) when ``max_in_flight`` mirrors are running already.
        ``answers``: how the shadow answers the request (a forecast's steps), one answer
        per record; its predictions of ``records`` by default."""
        if len(self.running) >= self.max_in_flight:
            self.stats["mirror_skipped"] += 1
            return
        call = answers or (lambda predictor: predictor.predict_valid(records))
        task = asyncio.get_running_loop().create_task(self._call(shadow, records, request_id, call))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def _call(
        self,
        shadow: LoadedModel,
        records: list[dict[str, Any]],
        request_id: str | None,
        answers: Callable[[Predictor], list[dict[str, Any]]],
    ) -> None:
        predictions, error, took_ms = None, None, 0.0
        try:
            predictions, took_ms = await asyncio.to_thread(timed, answers, shadow.predictor)
        except Exception as exc:  # a shadow's failure is data for the gate, not an outage
            error = one_line(exc)
            self.stats["shadow_errors"] += 1
        self.stats["mirrored"] += 1
        self.log.record(
            request_id,
            shadow.info.name,
            shadow.info.version,
            records,
            predictions,
            took_ms,
            "shadow",
            error,
            sampled=True,
        )
