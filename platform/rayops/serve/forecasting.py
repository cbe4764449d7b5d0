"""What a forecaster's replica does: ``POST /forecast`` answered by the served model (a
series' history sent, or read from the latest curated data), batched, logged a step per
record, mirrored to the shadow. A mixin of :class:`rayops.serve.deployment.ModelServer`."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from rayops.forecast import Prepared, answer, layout_of, prepare, series_key, step_records
from rayops.predict import Predictor
from rayops.serve.aliases import LoadedModel
from rayops.serve.answering import Answering, Routed, by_model


class Forecasting(Answering):
    """``/forecast`` on a :class:`ModelServer` (its aliases, history, log, mirror)."""

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def forecast_batch(
        self, items: list[tuple[LoadedModel, Prepared]]
    ) -> list[list[dict[str, Any]] | Exception]:
        """One transform and model call per model for every forecast in the batch (a
        request prepared with the model it was routed to is answered by that model)."""
        self.metrics.batch_size.observe(len(items))
        self.stats["forecast_batches"] += 1
        return by_model(items, answer)

    async def forecast(
        self, body: dict[str, Any], request_id: str | None = None, key: str | None = None
    ) -> dict[str, Any]:
        """The served model's forecast of the steps in ``body["future"]``; without
        ``history`` the series' latest curated observations are read. A DataError (unknown
        series, too short a history) is the caller's 422. Each step is a record of the
        prediction log (its ``record_index``, which feedback names)."""
        steps, model = await self.routed(
            Routed(
                step_records(body),
                lambda model, batched: self._forecast(model, body, batched),
                lambda steps: [{"prediction": s["value"]} for s in steps],
                lambda predictor: self._shadow_forecast(predictor, body),
                "forecasts",
            ),
            request_id,
            key,
        )
        return {"forecast": steps, "model": model.info.model_dump(), "request_id": request_id}

    async def _forecast(
        self, model: LoadedModel, body: dict[str, Any], batched: bool
    ) -> list[dict[str, Any]]:
        layout = layout_of(model.predictor)
        history = body.get("history")
        if history is None:  # a series the model knows (422 if not), then its curated rows
            series_key(layout, body.get("series"))
            history = await asyncio.to_thread(self.history.rows, layout, body.get("series"))
        return await self.called(
            model,
            lambda: prepare(model.predictor, body.get("series"), history, body["future"]),
            self.forecast_batch,
            answer,
            batched,
        )

    def _shadow_forecast(self, predictor: Predictor, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The shadow's forecast of a mirrored request (in a thread, off the request)."""
        history = body.get("history")
        if history is None:
            history = self.history.rows(layout_of(predictor), body.get("series"))
        prepared = prepare(predictor, body.get("series"), history, body["future"])
        return [{"prediction": s["value"]} for s in answer(predictor, [prepared])[0]]
