"""What every route of a replica does around its model call, whatever the task: route the
request (served model or canary), answer for a model that fails with the one served before
it, count, log and mirror to the shadow. :class:`Answering` is the base of the replica's
route mixins (:mod:`.forecasting`, :mod:`.recommending`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rayops.errors import DataError
from rayops.predict import Predictor
from rayops.serve.aliases import LoadedModel
from rayops.serve.routing import ModelFailed, fallback, in_share, route


@dataclass(frozen=True)
class Routed:
    """One request, as the route that received it describes it."""

    records: list[dict[str, Any]]  # what the prediction log keeps of it
    answer: Callable[[LoadedModel, bool], Awaitable[Any]]  # (model, batch it?) -> answer
    predictions: Callable[[Any], list[dict[str, Any]]]  # the log's predictions of an answer
    shadow: Callable[[Predictor], list[dict[str, Any]]]  # the shadow's (run in a thread)
    counter: str  # the stats key counting these requests


def by_model(
    items: Sequence[tuple[LoadedModel, Any]], answer: Callable[[Predictor, list[Any]], list[Any]]
) -> list[Any]:
    """A batch's answers: one call per model for the requests routed to it (a model's
    failure is its requests' only, returned in their places)."""
    groups: dict[int, list[int]] = {}
    for i, (model, _) in enumerate(items):
        groups.setdefault(id(model), []).append(i)
    out: list[Any] = [None] * len(items)
    for indexes in groups.values():
        model = items[indexes[0]][0]
        try:
            answers = answer(model.predictor, [items[i][1] for i in indexes])
        except Exception as exc:
            answers = [exc] * len(indexes)
        for i, found in zip(indexes, answers, strict=True):
            out[i] = found
    return out


class Answering:
    """The replica's request handling shared by its routes (see :meth:`routed`)."""

    aliases: Any
    history: Any
    settings: Any
    stats: Any
    metrics: Any
    log: Any
    mirror: Any
    in_flight: int
    shadow: Any
    _failed: Any

    async def has_company(self) -> bool:
        """Whether other requests are in this replica now (batching on): a batch would
        otherwise only wait ``batch_wait_timeout_s`` for company that is not coming. One
        turn of the event loop first: requests that arrive together each run to their
        first await before the next starts (Serve's direct ingress hands them over so), and
        without that turn each would find itself alone and none would be batched."""
        if self.settings.serve.max_batch_size <= 1:
            return False
        await asyncio.sleep(0)
        return self.in_flight > 1

    async def routed(
        self, request: Routed, request_id: str | None, key: str | None
    ) -> tuple[Any, LoadedModel]:
        """The answer of the model the request is routed to (the canary's, for a canary
        key), and that model. A model error is answered by the model served before it (the
        champion, for a canary), as for /predict; a mirror to the shadow runs after."""
        started = time.perf_counter()
        shadow = self.shadow
        model, role = route(self.aliases, key or request_id)
        try:
            result = await request.answer(model, role == "champion")
        except ModelFailed as failure:
            self._failed(failure.model, role, request.records, request_id, failure.error, started)
            instead = fallback(self.aliases, failure.model)
            if instead is None:
                raise failure.error from None
            model, role = instead, "fallback"
            result = await request.answer(model, False)
        self.stats[request.counter] += 1
        if role != "champion":
            self.stats[f"{role}_answers"] += 1
        mirrored = (
            shadow is not None
            and role == "champion"
            and self.mirror is not None
            and in_share(None, self.settings.serve.mirror_fraction)
        )
        if self.log is not None:
            self.log.record(
                request_id,
                model.info.name,
                model.info.version,
                request.records,
                request.predictions(result),
                (time.perf_counter() - started) * 1e3,
                role,
                sampled=mirrored or None,
            )
        if mirrored:
            assert shadow is not None and self.mirror is not None
            self.mirror.send(shadow, request.records, request_id, request.shadow)
        return result, model

    async def called(
        self,
        model: LoadedModel,
        prepare: Callable[[], Any],
        batch: Callable[[tuple[LoadedModel, Any]], Awaitable[Any]],
        answer: Callable[[Predictor, list[Any]], list[Any]],
        batched: bool,
    ) -> Any:
        """``model``'s answer to a request ``prepare`` readies for it: through the route's
        ``batch`` when other requests are in flight, else alone. A bad request (a
        DataError) is the caller's 422; any other error is the model's (ModelFailed)."""
        try:
            prepared = prepare()
            if batched and await self.has_company():
                result = await batch((model, prepared))
            else:
                self.metrics.batch_size.observe(1)  # a model call too, of one request
                result = answer(model.predictor, [prepared])[0]
        except DataError:
            raise
        except Exception as exc:
            result = exc
        if isinstance(result, Exception):
            raise ModelFailed(model, result)
        return result
