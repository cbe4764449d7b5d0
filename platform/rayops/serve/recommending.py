"""What a recommender's replica does: ``POST /recommend`` answered by the served model (the
user's history read from the latest curated data, the session's recent items after it),
batched into one ranking of the catalogue, logged a request per record (the prediction:
the items answered; a click sent to /feedback is its label), mirrored to the shadow. A
mixin of :class:`rayops.serve.deployment.ModelServer`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ray import serve

from rayops.errors import DataError
from rayops.predict import Predictor
from rayops.recommend import Prepared, answer, id_value, layout_of, prepare
from rayops.serve.aliases import LoadedModel
from rayops.serve.routing import ModelFailed, fallback, in_share, route


class Recommending:
    """``/recommend`` on a :class:`ModelServer` (its aliases, history, log, mirror)."""

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

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def recommend_batch(self, items: list[tuple[LoadedModel, Prepared]]
                              ) -> list[dict[str, Any] | Exception]:
        """One ranking of the catalogue per model for every request in the batch."""
        self.metrics.batch_size.observe(len(items))
        self.stats["recommend_batches"] += 1
        groups: dict[int, list[int]] = {}
        for i, (model, _) in enumerate(items):
            groups.setdefault(id(model), []).append(i)
        out: list[dict[str, Any] | Exception] = [{} for _ in items]
        for indexes in groups.values():
            model = items[indexes[0]][0]
            try:
                answers: list[Any] = answer(model.predictor, [items[i][1] for i in indexes])
            except Exception as exc:  # one model's failure is its requests' only
                answers = [exc] * len(indexes)
            for i, found in zip(indexes, answers, strict=True):
                out[i] = found
        return out

    async def recommend(self, body: dict[str, Any], request_id: str | None = None,
                        key: str | None = None) -> dict[str, Any]:
        """The served model's top items for ``body["user"]`` (the canary's, for a canary
        key). A DataError (an id of the wrong type) is the caller's 422; a model error is
        answered by the model served before, as for /predict."""
        started = time.perf_counter()
        shadow = self.shadow
        records = [{layout_of(self.aliases.model.predictor).user: body["user"],
                    "k": body.get("k"), "recent_items": list(body.get("recent_items") or [])}]
        model, role = route(self.aliases, key or request_id)
        try:
            result = await self._recommend(model, body, batched=role == "champion")
        except ModelFailed as failure:
            self._failed(failure.model, role, records, request_id, failure.error, started)
            instead = fallback(self.aliases, failure.model)
            if instead is None:
                raise failure.error from None
            model, role = instead, "fallback"
            result = await self._recommend(model, body, batched=False)
        self.stats["recommendations"] += 1
        if role != "champion":
            self.stats[f"{role}_answers"] += 1
        mirrored = (shadow is not None and role == "champion" and self.mirror is not None
                    and in_share(None, self.settings.serve.mirror_fraction))
        if self.log is not None:
            self.log.record(request_id, model.info.name, model.info.version, records,
                            [{"prediction": [i["item"] for i in result["items"]]}],
                            (time.perf_counter() - started) * 1e3, role,
                            sampled=mirrored or None)
        if mirrored:
            assert shadow is not None and self.mirror is not None
            self.mirror.send(shadow, records, request_id,
                             lambda predictor: self._shadow_recommend(predictor, body))
        return {**result, "model": model.info.model_dump(), "request_id": request_id}

    def _prepared(self, predictor: Predictor, body: dict[str, Any]) -> Prepared:
        """The user's curated interactions (a store that cannot be read: the caller's
        503, never a model failure), then the request's recent items."""
        layout = layout_of(predictor)
        user = id_value(predictor, layout.user, body["user"], "user")
        curated = self.history.rows_of({layout.user: user})
        k = int(body.get("k") or layout.k)
        return prepare(predictor, body["user"], curated, body.get("recent_items") or [], k)

    async def _recommend(self, model: LoadedModel, body: dict[str, Any], batched: bool
                         ) -> dict[str, Any]:
        prepared = await asyncio.to_thread(self._prepared, model.predictor, body)
        try:  # a bad request is the caller's (422); anything else is the model's
            if batched and self.in_flight > 1 and self.settings.serve.max_batch_size > 1:
                result = await self.recommend_batch((model, prepared))
            else:
                result = answer(model.predictor, [prepared])[0]
        except DataError:
            raise
        except Exception as exc:
            result = exc
        if isinstance(result, Exception):
            raise ModelFailed(model, result)
        return result

    def _shadow_recommend(self, predictor: Predictor, body: dict[str, Any]
                          ) -> list[dict[str, Any]]:
        """The shadow's answer to a mirrored request (in a thread, off the request)."""
        found = answer(predictor, [self._prepared(predictor, body)])[0]
        return [{"prediction": [i["item"] for i in found["items"]]}]
