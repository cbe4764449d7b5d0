"""The HTTP API of one replica: routes, limits, authentication and error bodies.

Built by the replica after it loaded its model, so the request body is typed by that
model's schema. Guards that must act before a body is read (size, bearer token) are a
small ASGI layer; nothing the API returns ever carries a stack trace.
"""

import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from rayops.errors import DataError, HistoryUnavailable, LabelsNotStored
from rayops.serve.bodies import (
    FeedbackResponse,
    ForecastResponse,
    Metadata,
    PredictResponse,
    RecommendRequest,
    RecommendResponse,
    feedback_model,
    request_model,
)
from rayops.tasks import task_of

logger = logging.getLogger(__name__)

OPEN_PATHS = ("/health",)  # load balancers probe without a token


class Server(Protocol):
    """What the app needs from the replica that owns it."""

    record_model: type[BaseModel]
    forecast_body: type[BaseModel] | None  # a forecaster's /forecast body; None: /predict
    task: str  # the served model's: what a true label must be
    max_records: int
    max_body_bytes: int
    token: str | None
    in_flight: int  # requests being answered now (this app counts them)

    async def predict(
        self, records: list[dict[str, Any]], request_id: str | None = None, key: str | None = None
    ) -> dict[str, Any]: ...

    async def forecast(
        self, body: dict[str, Any], request_id: str | None = None, key: str | None = None
    ) -> dict[str, Any]: ...

    async def recommend(
        self, body: dict[str, Any], request_id: str | None = None, key: str | None = None
    ) -> dict[str, Any]: ...

    async def feedback(self, labels: list[dict[str, Any]]) -> dict[str, int] | None: ...

    def metadata(self) -> dict[str, Any]: ...

    def health(self) -> dict[str, Any]: ...

    def observe(self, route: str, status: int, seconds: float) -> None: ...


def _json_safe(value: Any) -> Any:
    """Echo a bad input back without breaking JSON (NaN/inf) or the response size."""
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value if not isinstance(value, str) else value[:200]
    return repr(value)[:200]


def _error(status: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail}, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 listing each problem: where (body, records, index, field), what, and the value."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return _error(
        422,
        [
            {
                "loc": list(e.get("loc", ())),
                "msg": e.get("msg", ""),
                "type": e.get("type", ""),
                "input": _json_safe(e.get("input")),
            }
            for e in errors
        ],
    )


REQUEST_ID = "x-request-id"
ROUTING_KEY = "x-rayops-key"  # sticky canary assignment (a user or session id)
ROUTES = (
    "/predict",
    "/forecast",
    "/recommend",
    "/feedback",
    "/metadata",
    "/health",
    "/docs",
    "/openapi.json",
)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """500 whose reference is the request's X-Request-ID (in the access log too), never
    the exception itself."""
    reference = request.headers.get(REQUEST_ID) or uuid.uuid4().hex
    logger.error("Unhandled error (request %s) on %s", reference, request.url.path, exc_info=exc)
    return _error(500, f"internal error (reference {reference})")


def route_of(path: str) -> str:
    """The metrics label of a path: a known route, else "other" (bounded cardinality)."""
    return next((r for r in ROUTES if path.endswith(r)), "other")


class Guard:
    """ASGI layer around the routes: body size (413/411) and bearer token (401) checked
    before the body is read; every response, refusals included, counted by route and
    status; a request id on every request (Serve's proxy sets one; this adds it when
    the app runs without the proxy)."""

    def __init__(self, app: Any, server: Server) -> None:
        self.app, self.server = app, server

    def __getattr__(self, name: str) -> Any:
        # Serve looks at the FastAPI app (routes, exception handlers) through the wrapper.
        return getattr(self.app, name)

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        generated = None
        if REQUEST_ID.encode() not in headers:
            generated = uuid.uuid4().hex
            scope["headers"] = [
                *scope.get("headers", []),
                (REQUEST_ID.encode(), generated.encode()),
            ]
        status = 500  # what the client sees if the app dies before it answers

        async def counted_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if generated is not None:
                    message = {
                        **message,
                        "headers": [
                            *message.get("headers", []),
                            (b"x-request-id", generated.encode()),
                        ],
                    }
            await send(message)

        refusal = self._refusal(scope, headers)
        self.server.in_flight += 1
        try:
            await (refusal or self.app)(scope, receive, counted_send)
        finally:
            self.server.in_flight -= 1
            self.server.observe(route_of(scope["path"]), status, time.perf_counter() - started)

    def _refusal(self, scope: dict[str, Any], headers: dict[bytes, bytes]) -> Any:
        token = self.server.token
        if token and not scope["path"].endswith(OPEN_PATHS):
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not secrets.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return _error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        if scope["method"] in ("POST", "PUT", "PATCH"):
            length = headers.get(b"content-length")
            if length is None:
                return _error(411, "Content-Length is required")
            if not length.isdigit() or int(length) > self.server.max_body_bytes:
                return _error(
                    413,
                    f"body of {length.decode(errors='replace')} bytes is over "
                    f"the limit of {self.server.max_body_bytes}",
                )
        return None


def create_app(server: Server) -> Any:
    """The replica's ASGI app: FastAPI routes wrapped in the :class:`Guard`."""
    labels_model = feedback_model(server.max_records, server.task)
    app = FastAPI(
        title="rayops model API",
        description="Predictions from the registry's "
        "aliased model; see GET /metadata for the model and its input schema.",
    )
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return server.health()

    @app.get("/metadata", response_model=Metadata)
    async def metadata() -> dict[str, Any]:
        return server.metadata()

    served = task_of(server.task).route
    if served == "/forecast":
        _forecast_route(app, server)
    elif served == "/recommend":
        _recommend_route(app, server)
    else:
        _predict_route(app, server)

    @app.post(
        "/feedback",
        status_code=202,
        response_model=FeedbackResponse,
        responses={
            401: {"description": "missing or wrong bearer token"},
            422: {"description": "invalid labels (field and index named)"},
            503: {
                "description": "not stored (send again), or this deployment keeps no prediction log"
            },
        },
    )
    async def feedback(body: labels_model) -> Any:  # type: ignore[valid-type]
        try:
            counts = await server.feedback([item.model_dump() for item in body.labels])  # type: ignore[attr-defined]
        except LabelsNotStored as exc:
            return _error(503, str(exc), {"Retry-After": "1"})
        if counts is None:
            return _error(503, "feedback is off: serve.log_predictions is false")
        return JSONResponse(counts, status_code=202)

    return Guard(app, server)


def _predict_route(app: FastAPI, server: Server) -> None:
    """POST /predict: records of the model's features in, a prediction each out."""
    body_model = request_model(server.record_model, server.max_records)

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses={
            401: {"description": "missing or wrong bearer token"},
            413: {"description": "body too large"},
            422: {"description": "invalid records (field and index named)"},
            503: {"description": "overloaded: retry later"},
        },
    )
    async def predict(body: body_model, request: Request) -> Any:  # type: ignore[valid-type]
        records = [r.model_dump() for r in body.records]  # type: ignore[attr-defined]
        try:
            result = await server.predict(
                records, request.headers.get(REQUEST_ID), request.headers.get(ROUTING_KEY)
            )
        except DataError as exc:
            return _error(
                422, [{"loc": ["body", "records"], "msg": str(exc), "type": "value_error"}]
            )
        return JSONResponse(result)


def _forecast_route(app: FastAPI, server: Server) -> None:
    """POST /forecast: a series, its history (or none: the latest curated data) and the
    future steps in, a value and quantiles per step out."""
    body_model = server.forecast_body

    @app.post(
        "/forecast",
        response_model=ForecastResponse,
        responses={
            401: {"description": "missing or wrong bearer token"},
            413: {"description": "body too large"},
            422: {
                "description": "invalid body, unknown series or a history "
                "too short (what and where named)"
            },
            503: {
                "description": "no history sent and the curated data could "
                "not be read: send it, or retry"
            },
        },
    )
    async def forecast(body: body_model, request: Request) -> Any:  # type: ignore[valid-type]
        try:
            result = await server.forecast(
                body.model_dump(),  # type: ignore[attr-defined]
                request.headers.get(REQUEST_ID),
                request.headers.get(ROUTING_KEY),
            )
        except DataError as exc:
            where = str(exc).split(":", 1)[0].split("[", 1)[0].split(".", 1)[0]
            return _error(422, [{"loc": ["body", where], "msg": str(exc), "type": "value_error"}])
        except HistoryUnavailable as exc:
            return _error(503, str(exc), {"Retry-After": "1"})
        return JSONResponse(result)


def _recommend_route(app: FastAPI, server: Server) -> None:
    """POST /recommend: a user (and the session's recent items) in, the top items out."""

    @app.post(
        "/recommend",
        response_model=RecommendResponse,
        responses={
            401: {"description": "missing or wrong bearer token"},
            413: {"description": "body too large"},
            422: {"description": "invalid body (what and where named)"},
            503: {"description": "the curated data could not be read: retry"},
        },
    )
    async def recommend(body: RecommendRequest, request: Request) -> Any:
        try:
            result = await server.recommend(
                body.model_dump(), request.headers.get(REQUEST_ID), request.headers.get(ROUTING_KEY)
            )
        except DataError as exc:
            where = str(exc).split(":", 1)[0].split("[", 1)[0]
            return _error(422, [{"loc": ["body", where], "msg": str(exc), "type": "value_error"}])
        except HistoryUnavailable as exc:
            return _error(503, str(exc), {"Retry-After": "1"})
        return JSONResponse(result)
