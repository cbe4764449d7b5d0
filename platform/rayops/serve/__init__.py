"""Ray Serve: the registry's aliased model behind an HTTP API.

``build_app`` is the import path for ``serve run`` / ``serve deploy``
(``rayops.serve:build_app``, args ``config`` and ``overrides``); ``deploy`` runs the app on
the connected cluster; ``serve_config`` writes the equivalent Serve config file.
"""

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

from rayops.config import PipelineConfig, load_config
from rayops.serve.deployment import ModelServer, replica_settings, wait_ready

__all__ = ["AppArgs", "ModelServer", "build_app", "build_application", "deploy",
           "serve_config", "wait_ready"]


def deployment_options(cfg: PipelineConfig) -> dict[str, Any]:
    """Replica resources, concurrency, queue limit and autoscaling, from the config."""
    s = cfg.serve
    return {
        "name": f"{cfg.name}-model",
        "ray_actor_options": {"num_cpus": s.cpus_per_replica},
        "max_ongoing_requests": s.max_ongoing_requests,
        "max_queued_requests": s.max_queued_requests,
        "autoscaling_config": {
            "min_replicas": s.autoscaling.min_replicas,
            "initial_replicas": max(s.autoscaling.min_replicas, 1),
            "max_replicas": s.autoscaling.max_replicas,
            "target_ongoing_requests": s.autoscaling.target_ongoing_requests,
            "upscale_delay_s": s.autoscaling.upscale_delay_s,
            "downscale_delay_s": s.autoscaling.downscale_delay_s,
        },
    }


def build_application(cfg: PipelineConfig) -> Application:
    """The Serve application for a pipeline config."""
    deployment = serve.deployment(serve.ingress()(ModelServer), **deployment_options(cfg))
    return deployment.bind(replica_settings(cfg))


class AppArgs(BaseModel):
    """Arguments of :func:`build_app`, e.g. ``serve run rayops.serve:build_app config=x.yaml``."""

    model_config = ConfigDict(extra="forbid")
    config: str = Field(description="Path of the pipeline config file.")
    overrides: list[str] = Field(default_factory=list, description="KEY=VALUE overrides.")


def build_app(args: AppArgs) -> Application:
    """Import path for ``serve run`` / ``serve deploy``."""
    return build_application(load_config(args.config, args.overrides))


def _http_options(cfg: PipelineConfig) -> dict[str, Any]:
    return {"host": cfg.serve.host, "port": cfg.serve.port,
            "request_timeout_s": cfg.serve.request_timeout_s}


def deploy(cfg: PipelineConfig) -> str:
    """Run the app on the connected Ray cluster; returns the base URL of the API."""
    serve.start(http_options=_http_options(cfg))
    serve.run(build_application(cfg), name=cfg.serve.app_name,
              route_prefix=cfg.serve.route_prefix, blocking=False)
    host = "127.0.0.1" if cfg.serve.host in ("0.0.0.0", "::") else cfg.serve.host
    return f"http://{host}:{cfg.serve.port}{cfg.serve.route_prefix.rstrip('/')}"


def serve_config(cfg: PipelineConfig, config_path: Path, overrides: list[str]) -> dict[str, Any]:
    """A Serve config file (``serve deploy`` / ``serve run``) equivalent to ``deploy``."""
    options = deployment_options(cfg)
    name = options.pop("name")
    return {
        "proxy_location": "EveryNode",
        "http_options": _http_options(cfg),
        "applications": [{
            "name": cfg.serve.app_name,
            "route_prefix": cfg.serve.route_prefix,
            "import_path": "rayops.serve:build_app",
            "args": {"config": str(config_path.resolve()), "overrides": overrides},
            "deployments": [{"name": name, **options}],
        }],
    }
