"""The whole path as plain functions: ingest -> train or sweep -> register -> deploy."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from rayops import tracking
from rayops.config import PipelineConfig
from rayops.data.ingest import ingest
from rayops.data.versions import DatasetVersion, load_version
from rayops.train import run_training
from rayops.tune import run_sweep

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelResult:
    """A trained (or swept) model, logged to MLflow and registered."""

    run_id: str
    metrics: dict[str, float]
    registered: tracking.RegisteredModel
    dataset: str

    def summary(self) -> str:
        reg = self.registered
        scores = ", ".join(
            f"{k}={v:.4f}" for k, v in self.metrics.items() if k.startswith("valid_")
        )
        return (f"registered {reg.name} v{reg.version} @{reg.alias} from run {self.run_id} "
                f"on {self.dataset}: {scores}")


@dataclass(frozen=True)
class PipelineResult:
    dataset: DatasetVersion
    model: ModelResult
    url: str | None


def train_and_register(cfg: PipelineConfig, version: DatasetVersion | None = None,
                       sweep: bool | None = None) -> ModelResult:
    """A training run (or a sweep, when tune.enabled) whose best model becomes champion."""
    version = version or load_version(cfg)
    if cfg.tune.enabled if sweep is None else sweep:
        outcome = run_sweep(cfg, version)
        run_id, metrics, model_uri = outcome.best_run_id, outcome.metrics, outcome.model_uri
    else:
        trained = run_training(cfg, version)
        run_id, metrics, model_uri = trained.run_id, trained.metrics, trained.model_uri
    registered = tracking.register(cfg.tracking, cfg.model_name, model_uri, run_id,
                                   alias=tracking.CHAMPION)
    return ModelResult(run_id, metrics, registered, version.id)


def run_pipeline(cfg: PipelineConfig, deploy: bool = True) -> PipelineResult:
    """Every stage in order, on the connected Ray cluster."""
    from rayops import serve

    steps = 3 + int(deploy)
    logger.info("[1/%d] ingest: %s -> curated dataset %r", steps, cfg.data.source,
                cfg.dataset_name)
    version = ingest(cfg)
    logger.info("[2/%d] %s on %s", steps, "sweep" if cfg.tune.enabled else "train", version.id)
    model = train_and_register(cfg, version)
    logger.info("[3/%d] registered %s v%s as @%s", steps, model.registered.name,
                model.registered.version, model.registered.alias)
    url = None
    if deploy:
        logger.info("[4/%d] deploy %s@%s with Ray Serve", steps, cfg.model_name,
                    cfg.serve.model_alias)
        url = serve.deploy(cfg)
    return PipelineResult(version, model, url)
