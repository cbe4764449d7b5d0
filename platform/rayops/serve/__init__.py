"""Ray Serve: the registry's aliased model behind an HTTP API.

``build_app`` is the import path for ``serve run`` / ``serve deploy``
(``rayops.serve:build_app``, args ``config`` and ``overrides``); ``deploy`` runs the app on
the connected cluster; ``serve_config`` writes the equivalent Serve config file.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve
from ray.serve import Application

from rayops.config import PipelineConfig, load_config, parse_overrides, validate_config
from rayops.serve.deployment import ModelServer, wait_ready
from rayops.serve.settings import replica_settings

__all__ = [
    "USER_CODE_THREAD",
    "AppArgs",
    "ModelServer",
    "build_app",
    "build_application",
    "deploy",
    "serve_config",
    "wait_ready",
]


# Ray Serve's switch for where a replica runs the app's code (serve.user_code_thread)
USER_CODE_THREAD = "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"


def deployment_options(cfg: PipelineConfig) -> dict[str, Any]:
    """Replica resources, concurrency, queue limit, autoscaling and where the app's code
    runs, from the config."""
    s = cfg.serve
    return {
        "name": f"{cfg.name}-model",
        "ray_actor_options": {
            "num_cpus": s.cpus_per_replica,
            # read by Serve in the replica's process (the job's own env_vars are kept)
            "runtime_env": {"env_vars": {USER_CODE_THREAD: "1" if s.user_code_thread else "0"}},
        },
        "max_ongoing_requests": s.max_ongoing_requests,
        "max_queued_requests": s.max_queued_requests,
        "logging_config": {"enable_access_log": s.access_log},
        "autoscaling_config": {
            "min_replicas": s.autoscaling.min_replicas,
            "initial_replicas": max(s.autoscaling.min_replicas, 1),
            "max_replicas": s.autoscaling.max_replicas,
            "target_ongoing_requests": s.autoscaling.target_ongoing_requests,
            "upscale_delay_s": s.autoscaling.upscale_delay_s,
            "downscale_delay_s": s.autoscaling.downscale_delay_s,
            "look_back_period_s": s.autoscaling.look_back_period_s,
        },
    }


def build_application(cfg: PipelineConfig) -> Application:
    """The Serve application for a pipeline config."""
    deployment = serve.deployment(serve.ingress()(ModelServer), **deployment_options(cfg))
    return deployment.bind(replica_settings(cfg))  # type: ignore[attr-defined]


class AppArgs(BaseModel):
    """Arguments of :func:`build_app`: the pipeline config inline (what ``deploy --emit``
    writes, so the Serve config needs no file on the cluster), or the path of a config file
    that exists where Serve runs (``serve run rayops.serve:build_app config=x.yaml``)."""

    model_config = ConfigDict(extra="forbid")
    pipeline: dict[str, Any] | None = Field(None, description="The pipeline config itself.")
    config: str | None = Field(None, description="Path of the pipeline config file.")
    overrides: list[str] = Field(default_factory=list, description="KEY=VALUE overrides.")

    @model_validator(mode="after")
    def _one_source(self) -> "AppArgs":
        if (self.pipeline is None) == (self.config is None):
            raise ValueError(
                "give exactly one of 'pipeline' (the config inline) and 'config' (a path)"
            )
        return self


def build_app(args: AppArgs) -> Application:
    """Import path for ``serve run`` / ``serve deploy``."""
    if args.pipeline is not None:
        cfg = validate_config(args.pipeline, "serve application args 'pipeline'")
        return build_application(
            cfg.with_overrides(parse_overrides(args.overrides)) if args.overrides else cfg
        )
    assert args.config is not None
    return build_application(load_config(args.config, args.overrides))


def inline_config(cfg: PipelineConfig) -> dict[str, Any]:
    """The validated config as plain data for another machine: credentials left out (they
    come from that machine's environment), every default written out."""
    return cfg.model_dump(
        mode="json", exclude={"storage": {"access_key_id", "secret_access_key", "session_token"}}
    )


def _http_options(cfg: PipelineConfig) -> dict[str, Any]:
    return {
        "host": cfg.serve.host,
        "port": cfg.serve.port,
        "request_timeout_s": cfg.serve.request_timeout_s,
    }


def deploy(cfg: PipelineConfig) -> str:
    """Run the app on the connected Ray cluster; returns the base URL of the API."""
    serve.start(http_options=_http_options(cfg))
    serve.run(
        build_application(cfg),
        name=cfg.serve.app_name,
        route_prefix=cfg.serve.route_prefix,
        blocking=False,
    )
    host = "127.0.0.1" if cfg.serve.host in ("0.0.0.0", "::") else cfg.serve.host
    return f"http://{host}:{cfg.serve.port}{cfg.serve.route_prefix.rstrip('/')}"


def serve_config(cfg: PipelineConfig) -> dict[str, Any]:
    """A Serve config file (``serve deploy`` / ``serve run``) equivalent to ``deploy``; the
    pipeline config (overrides applied) travels inline, so no local path is in it."""
    options = deployment_options(cfg)
    name = options.pop("name")
    return {
        "proxy_location": "EveryNode",
        "http_options": _http_options(cfg),
        "applications": [
            {
                "name": cfg.serve.app_name,
                "route_prefix": cfg.serve.route_prefix,
                "import_path": "rayops.serve:build_app",
                "args": {"pipeline": inline_config(cfg)},
                "deployments": [{"name": name, **options}],
            }
        ],
    }
