"""What a recommender's replica does: ``POST /recommend`` answered by the served model (the
user's history read from the latest curated data, the session's recent items after it),
batched into one ranking of the catalogue, logged a request per record (the prediction:
the items answered; a click sent to /feedback is its label), mirrored to the shadow. A
mixin of :class:`rayops.serve.deployment.ModelServer`."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from rayops.predict import Predictor
from rayops.recommend import Prepared, answer, id_value, layout_of, prepare
from rayops.serve.aliases import LoadedModel
from rayops.serve.answering import Answering, Routed, by_model


class Recommending(Answering):
    """``/recommend`` on a :class:`ModelServer` (its aliases, history, log, mirror)."""

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def recommend_batch(
        self, items: list[tuple[LoadedModel, Prepared]]
    ) -> list[dict[str, Any] | Exception]:
        """One ranking of the catalogue per model for every request in the batch."""
        self.metrics.batch_size.observe(len(items))
        self.stats["recommend_batches"] += 1
        return by_model(items, answer)

    async def recommend(
        self, body: dict[str, Any], request_id: str | None = None, key: str | None = None
    ) -> dict[str, Any]:
        """The served model's top items for ``body["user"]``. A DataError (an id of the
        wrong type) is the caller's 422. The request is one record of the prediction log;
        its prediction, the items answered."""
        records = [
            {
                layout_of(self.aliases.model.predictor).user: body["user"],
                "k": body.get("k"),
                "recent_items": list(body.get("recent_items") or []),
            }
        ]
        result, model = await self.routed(
            Routed(
                records,
                lambda model, batched: self._recommend(model, body, batched),
                lambda found: [{"prediction": [i["item"] for i in found["items"]]}],
                lambda predictor: self._shadow_recommend(predictor, body),
                "recommendations",
            ),
            request_id,
            key,
        )
        return {**result, "model": model.info.model_dump(), "request_id": request_id}

    def _curated(self, predictor: Predictor, body: dict[str, Any]) -> Any:
        """The user's curated interactions (a store that cannot be read: the caller's 503,
        never a model failure)."""
        layout = layout_of(predictor)
        user = id_value(predictor, layout.user, body["user"], "user")
        return self.history.rows_of(layout.user, user)

    @staticmethod
    def _prepared(predictor: Predictor, body: dict[str, Any], curated: Any) -> Prepared:
        k = int(body.get("k") or layout_of(predictor).k)
        return prepare(predictor, body["user"], curated, body.get("recent_items") or [], k)

    async def _recommend(
        self, model: LoadedModel, body: dict[str, Any], batched: bool
    ) -> dict[str, Any]:
        curated = await asyncio.to_thread(self._curated, model.predictor, body)
        return await self.called(
            model,
            lambda: self._prepared(model.predictor, body, curated),
            self.recommend_batch,
            answer,
            batched,
        )

    def _shadow_recommend(self, predictor: Predictor, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The shadow's answer to a mirrored request (in a thread, off the request)."""
        prepared = self._prepared(predictor, body, self._curated(predictor, body))
        found = answer(predictor, [prepared])[0]
        return [{"prediction": [i["item"] for i in found["items"]]}]
