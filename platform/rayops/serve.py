"""Ray Serve: the registry's aliased model behind a FastAPI app with batching and autoscaling.

Each replica loads the model version an MLflow alias points to (``champion`` by default),
then builds its FastAPI app from that model's input schema (``__serve_build_asgi_app__``),
so the request model always matches the model actually loaded. Requests are merged across
callers by ``@serve.batch`` into one vectorized model call.
"""

import datetime as dt
import itertools
import logging
from typing import Annotated, Any, Literal, Optional

import numpy as np
import pandas as pd
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, create_model
from ray import serve
from ray.serve import Application

from rayops import tracking
from rayops.config import ColumnSpec, PipelineConfig, TrackingConfig, load_config
from rayops.errors import DataError

logger = logging.getLogger(__name__)


def _field_type(spec: ColumnSpec) -> Any:
    """Strict pydantic types: a string where a number belongs is a 422, not a coercion."""
    if spec.type == "numeric":
        return Annotated[float, Field(strict=True, allow_inf_nan=False, ge=spec.min, le=spec.max)]
    if spec.type == "integer":
        return Annotated[int, Field(strict=True, ge=spec.min, le=spec.max)]
    if spec.type == "boolean":
        return Annotated[bool, Field(strict=True)]
    if spec.type == "datetime":
        return dt.datetime  # ISO 8601 text in JSON
    if spec.values:
        return Literal[tuple(spec.values)]  # type: ignore[valid-type]
    return Annotated[str, Field(strict=True, max_length=512)]


def record_model(schema: dict[str, ColumnSpec], label: str) -> type[BaseModel]:
    """The pydantic model of one input record: the features, typed, unknown keys refused."""
    fields: dict[str, Any] = {}
    for name, spec in schema.items():
        if name == label:
            continue
        kind = _field_type(spec)
        fields[name] = (Optional[kind], None) if spec.nullable else (kind, ...)  # noqa: UP045
    return create_model("Record", __config__=ConfigDict(extra="forbid"), **fields)


class ModelInfo(BaseModel):
    name: str
    version: str
    alias: str
    run_id: str


class ModelServer:
    """One replica: the aliased model version and the FastAPI app built around it."""

    def __init__(self, tracking_cfg: dict[str, Any], model_name: str, alias: str,
                 max_records: int, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        from rayops.predict import Predictor

        tracking_config = TrackingConfig.model_validate(tracking_cfg)
        registered = tracking.resolve_alias(tracking_config, model_name, alias)
        self.predictor = Predictor.load(tracking.download_bundle(tracking_config, registered))
        self.info = ModelInfo(name=registered.name, version=registered.version, alias=alias,
                              run_id=registered.run_id)
        self.max_records = max_records
        self.predict_batch.set_max_batch_size(max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        logger.info("Replica serving %s v%s (@%s)", registered.name, registered.version, alias)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict_batch(self, matrices: list[np.ndarray]) -> list[list[dict[str, Any]]]:
        """One model call for every request in the batch, split back per request."""
        merged = self.predictor.predict_matrix(np.concatenate(matrices, axis=0))
        bounds = np.cumsum([0, *(len(m) for m in matrices)])
        return [merged[start:end] for start, end in itertools.pairwise(bounds)]

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self)


# No `from __future__ import annotations` in this module: FastAPI must see the request
# model built at runtime as a real type, not a string it cannot resolve.
def create_app(server: ModelServer) -> FastAPI:
    """The HTTP API of one replica, typed by the loaded model's schema."""
    predictor = server.predictor
    record = record_model(predictor.schema, predictor.preprocessor.label)
    request_model = create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        records=(list[record], Field(min_length=1, max_length=server.max_records)),  # type: ignore[valid-type]
    )
    app = FastAPI(title=f"rayops: {server.info.name}", version=server.info.version)
    app.add_exception_handler(RequestValidationError, _validation_error)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": server.info.model_dump()}

    @app.post("/predict")
    async def predict(body: request_model) -> dict[str, Any]:  # type: ignore[valid-type]
        frame = pd.DataFrame([r.model_dump() for r in body.records])  # type: ignore[attr-defined]
        try:
            matrix = predictor.matrix(frame)
        except DataError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        predictions = await server.predict_batch(matrix)
        return {"model": server.info.model_dump(), "predictions": predictions}

    return app


def _json_safe(value: Any) -> Any:
    """Echo a bad input back without breaking JSON (NaN/inf) or the response size."""
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value if not isinstance(value, str) else value[:200]
    return repr(value)[:200]


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 listing each problem: where (body, records, index, field), what, and the value."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", ""),
               "input": _json_safe(e.get("input"))} for e in errors]
    return JSONResponse(status_code=422, content={"detail": detail})


def build_application(cfg: PipelineConfig) -> Application:
    """The Serve application for a pipeline config."""
    scaling = cfg.serve.autoscaling
    deployment = serve.deployment(
        serve.ingress()(ModelServer),
        name=f"{cfg.name}-model",
        ray_actor_options={"num_cpus": cfg.serve.cpus_per_replica},
        max_ongoing_requests=cfg.serve.max_ongoing_requests,
        autoscaling_config={
            "min_replicas": scaling.min_replicas,
            "initial_replicas": max(scaling.min_replicas, 1),
            "max_replicas": scaling.max_replicas,
            "target_ongoing_requests": scaling.target_ongoing_requests,
            "upscale_delay_s": scaling.upscale_delay_s,
            "downscale_delay_s": scaling.downscale_delay_s,
        },
    )
    return deployment.bind(cfg.tracking.model_dump(), cfg.model_name, cfg.serve.model_alias,
                           cfg.serve.max_records_per_request, cfg.serve.max_batch_size,
                           cfg.serve.batch_wait_timeout_s)


class AppArgs(BaseModel):
    """Arguments of :func:`build_app`, e.g. ``serve run rayops.serve:build_app config=x.yaml``."""

    model_config = ConfigDict(extra="forbid")
    config: str = Field(description="Path of the pipeline config file.")
    overrides: list[str] = Field(default_factory=list, description="KEY=VALUE overrides.")


def build_app(args: AppArgs) -> Application:
    """Import path for ``serve run`` / ``serve deploy``."""
    return build_application(load_config(args.config, args.overrides))


def deploy(cfg: PipelineConfig) -> str:
    """Run the app on the connected Ray cluster; returns the base URL of the API."""
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    serve.run(build_application(cfg), name=cfg.serve.app_name,
              route_prefix=cfg.serve.route_prefix, blocking=False)
    host = "127.0.0.1" if cfg.serve.host in ("0.0.0.0", "::") else cfg.serve.host
    return f"http://{host}:{cfg.serve.port}{cfg.serve.route_prefix.rstrip('/')}"
