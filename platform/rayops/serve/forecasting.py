"""What a forecaster's replica does: ``POST /forecast`` answered by the served model (a
series' history sent, or read from the latest curated data), batched, logged a step per
record, mirrored to the shadow. A mixin of :class:`rayops.serve.deployment.ModelServer`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ray import serve

from rayops.errors import DataError
from rayops.forecast import Prepared, answer, layout_of, prepare, series_key, step_records
from rayops.predict import Predictor
from rayops.serve.aliases import LoadedModel
from rayops.serve.routing import ModelFailed, fallback, in_share, route


class Forecasting:
    """``/forecast`` on a :class:`ModelServer` (its aliases, history, log, mirror)."""

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
    async def forecast_batch(self, items: list[tuple[LoadedModel, Prepared]]
                             ) -> list[list[dict[str, Any]] | Exception]:
        """One transform and model call per model for every forecast in the batch (a
        request prepared with the model it was routed to is answered by that model)."""
        self.metrics.batch_size.observe(len(items))
        self.stats["forecast_batches"] += 1
        groups: dict[int, list[int]] = {}
        for i, (model, _) in enumerate(items):
            groups.setdefault(id(model), []).append(i)
        out: list[list[dict[str, Any]] | Exception] = [[] for _ in items]
        for indexes in groups.values():
            model = items[indexes[0]][0]
            try:
                answers = answer(model.predictor, [items[i][1] for i in indexes])
            except Exception as exc:  # one model's failure is its requests' only
                answers = [exc] * len(indexes)  # type: ignore[list-item]
            for i, found in zip(indexes, answers, strict=True):
                out[i] = found
        return out

    async def forecast(self, body: dict[str, Any], request_id: str | None = None,
                       key: str | None = None) -> dict[str, Any]:
        """The served model's forecast (the canary's, for a canary key) of the steps in
        ``body["future"]``; without ``history`` the series' latest curated observations
        are read. A DataError (unknown series, too short a history) is the caller's 422;
        a model error is answered by the model served before, as for /predict. Each step
        is a record of the prediction log (its ``record_index``, which feedback names)."""
        started = time.perf_counter()
        shadow = self.shadow
        records = step_records(body)  # what the log keeps of it: one record per step
        model, role = route(self.aliases, key or request_id)
        try:
            steps = await self._forecast(model, body, batched=role == "champion")
        except ModelFailed as failure:
            self._failed(failure.model, role, records, request_id, failure.error, started)
            instead = fallback(self.aliases, failure.model)
            if instead is None:
                raise failure.error from None
            model, role = instead, "fallback"
            steps = await self._forecast(model, body, batched=False)
        self.stats["forecasts"] += 1
        if role != "champion":
            self.stats[f"{role}_answers"] += 1
        mirrored = (shadow is not None and role == "champion" and self.mirror is not None
                    and in_share(None, self.settings.serve.mirror_fraction))
        if self.log is not None:
            self.log.record(request_id, model.info.name, model.info.version, records,
                            [{"prediction": s["value"]} for s in steps],
                            (time.perf_counter() - started) * 1e3, role,
                            sampled=mirrored or None)
        if mirrored:
            assert shadow is not None and self.mirror is not None
            self.mirror.send(shadow, records, request_id,
                             lambda predictor: self._shadow_forecast(predictor, body))
        return {"forecast": steps, "model": model.info.model_dump(), "request_id": request_id}

    async def _forecast(self, model: LoadedModel, body: dict[str, Any], batched: bool
                        ) -> list[dict[str, Any]]:
        layout = layout_of(model.predictor)
        history = body.get("history")
        if history is None:  # a series the model knows (422 if not), then its curated rows
            series_key(layout, body.get("series"))
            history = await asyncio.to_thread(self.history.rows, layout, body.get("series"))
        try:  # a bad request is the caller's (422); anything else is the model's
            prepared = prepare(model.predictor, body.get("series"), history, body["future"])
            if batched and self.in_flight > 1 and self.settings.serve.max_batch_size > 1:
                result = await self.forecast_batch((model, prepared))
            else:
                result = answer(model.predictor, [prepared])[0]
        except DataError:
            raise
        except Exception as exc:
            result = exc
        if isinstance(result, Exception):
            raise ModelFailed(model, result)
        return result

    def _shadow_forecast(self, predictor: Predictor, body: dict[str, Any]
                         ) -> list[dict[str, Any]]:
        """The shadow's forecast of a mirrored request (in a thread, off the request)."""
        history = body.get("history")
        if history is None:
            history = self.history.rows(layout_of(predictor), body.get("series"))
        prepared = prepare(predictor, body.get("series"), history, body["future"])
        return [{"prediction": s["value"]} for s in answer(predictor, [prepared])[0]]

