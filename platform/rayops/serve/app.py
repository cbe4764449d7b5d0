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

from rayops.errors import DataError
from rayops.serve.schema import Metadata, PredictResponse, request_model

logger = logging.getLogger(__name__)

OPEN_PATHS = ("/health",)  # load balancers probe without a token


class Server(Protocol):
    """What the app needs from the replica that owns it."""

    record_model: type[BaseModel]
    max_records: int
    max_body_bytes: int
    token: str | None

    async def predict(self, records: list[dict[str, Any]]) -> dict[str, Any]: ...

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
    return _error(422, [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""),
                         "type": e.get("type", ""), "input": _json_safe(e.get("input"))}
                        for e in errors])


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """500 with a reference to the log line, never the exception itself."""
    reference = uuid.uuid4().hex[:12]
    logger.error("Unhandled error (ref %s) on %s", reference, request.url.path, exc_info=exc)
    return _error(500, f"internal error (reference {reference})")


class Guard:
    """ASGI layer: body size (413/411) and bearer token (401) checked before reading."""

    def __init__(self, app: Any, server: Server) -> None:
        self.app, self.server = app, server

    def __getattr__(self, name: str) -> Any:
        # Serve looks at the FastAPI app (routes, exception handlers) through the wrapper.
        return getattr(self.app, name)

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            return await refusal(scope, receive, send)
        return await self.app(scope, receive, send)

    def _refusal(self, scope: dict[str, Any], headers: dict[bytes, bytes]) -> Any:
        token = self.server.token
        if token and not scope["path"].endswith(OPEN_PATHS):
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not secrets.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return _error(401, "missing or wrong bearer token",
                              {"WWW-Authenticate": "Bearer"})
        if scope["method"] in ("POST", "PUT", "PATCH"):
            length = headers.get(b"content-length")
            if length is None:
                return _error(411, "Content-Length is required")
            if not length.isdigit() or int(length) > self.server.max_body_bytes:
                return _error(413, f"body of {length.decode(errors='replace')} bytes is over "
                                   f"the limit of {self.server.max_body_bytes}")
        return None


def create_app(server: Server) -> Any:
    """The replica's ASGI app: FastAPI routes wrapped in the :class:`Guard`."""
    body_model = request_model(server.record_model, server.max_records)
    app = FastAPI(title="rayops model API", description="Predictions from the registry's "
                  "aliased model; see GET /metadata for the model and its input schema.")
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return server.health()

    @app.get("/metadata", response_model=Metadata)
    async def metadata() -> dict[str, Any]:
        return server.metadata()

    @app.post("/predict", response_model=PredictResponse,
              responses={401: {"description": "missing or wrong bearer token"},
                         413: {"description": "body too large"},
                         422: {"description": "invalid records (field and index named)"},
                         503: {"description": "overloaded: retry later"}})
    async def predict(body: body_model) -> Any:  # type: ignore[valid-type]
        started = time.perf_counter()
        records = [r.model_dump() for r in body.records]  # type: ignore[attr-defined]
        try:
            result = await server.predict(records)
        except DataError as exc:
            server.observe("/predict", 422, time.perf_counter() - started)
            return _error(422, [{"loc": ["body", "records"], "msg": str(exc),
                                 "type": "value_error"}])
        server.observe("/predict", 200, time.perf_counter() - started)
        return JSONResponse(result)

    return Guard(app, server)
