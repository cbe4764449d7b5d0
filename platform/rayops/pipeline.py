"""The whole path as plain functions: ingest -> train or sweep -> gate -> deploy."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rayops.config import PipelineConfig
from rayops.data.ingest import ingest
from rayops.data.versions import DatasetVersion, load_version
from rayops.errors import ConfigError
from rayops.gate import Decision, register_and_gate
from rayops.train import run_training
from rayops.train.records import NothingToResume
from rayops.tune import run_sweep

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelResult:
    """A trained (or swept) model, logged to MLflow, registered and gated."""

    run_id: str
    metrics: dict[str, float]
    decision: Decision
    dataset: str

    def summary(self) -> str:
        scores = ", ".join(
            f"{k}={v:.4f}" for k, v in self.metrics.items() if k.startswith("valid_")
        )
        return f"run {self.run_id} on {self.dataset}: {scores}\n{self.decision.summary()}"


@dataclass(frozen=True)
class PipelineResult:
    dataset: DatasetVersion
    model: ModelResult
    url: str | None


def train_and_register(
    cfg: PipelineConfig,
    version: DatasetVersion | None = None,
    sweep: bool | None = None,
    resume: bool = False,
    dataset_version: int | None = None,
    promote: bool = True,
    record_name: str | None = None,
) -> ModelResult:
    """A training run (or a sweep, when tune.enabled) registered and gated: if it beats the
    current champion on the same validation data it becomes ``challenger``, and
    ``champion`` when ``promote``. It trains on ``version``, else on ``dataset_version``
    (a table version), else on the latest. ``record_name`` names the run (a caller that
    must find its own run again: with ``resume`` it continues that run, or starts it on
    ``version`` if it never began)."""
    if version is None and dataset_version is not None:
        if resume:
            raise ConfigError(
                "--resume continues on the dataset version the run started "
                f"on; drop --dataset-version {dataset_version}"
            )
        version = load_version(cfg, dataset_version)
    if cfg.tune.enabled if sweep is None else sweep:
        swept = _continued(run_sweep, cfg, version, resume, record_name)
        run_id, metrics, model_uri = swept.best_run_id, swept.metrics, swept.model_uri
        trained_on = swept.dataset_version
        if cfg.tune.final_model == "retrain":
            final = f"{record_name}-final" if record_name else None
            retrained = _continued(
                run_training,
                cfg.with_overrides(swept.best_config),
                version or load_version(cfg, trained_on),
                resume and final is not None,
                final,
            )
            run_id, metrics, model_uri = retrained.run_id, retrained.metrics, retrained.model_uri
            trained_on = retrained.dataset_version
    else:
        trained = _continued(run_training, cfg, version, resume, record_name)
        run_id, metrics, model_uri = trained.run_id, trained.metrics, trained.model_uri
        trained_on = trained.dataset_version
    if version is None or version.version != trained_on:  # a resumed run's own version
        version = load_version(cfg, trained_on)
    decision = register_and_gate(cfg, model_uri, run_id, version, promote)
    return ModelResult(run_id, metrics, decision, version.id)


def _continued(
    run: Callable[..., Any],
    cfg: PipelineConfig,
    version: DatasetVersion | None,
    resume: bool,
    record_name: str | None,
) -> Any:
    """``run`` (a training run or a sweep) resumed, or new. A named run that never began
    (its caller stopped before it) starts now, under that name."""
    if not resume:
        return run(cfg, version, record_name=record_name)
    try:
        return run(cfg, None, resume=True, record_name=record_name)
    except NothingToResume:
        if record_name is None:
            raise
        return run(cfg, version, record_name=record_name)


def run_pipeline(cfg: PipelineConfig, deploy: bool = True) -> PipelineResult:
    """Every stage in order, on the connected Ray cluster."""
    from rayops import serve

    steps = 3 + int(deploy)
    logger.info("[1/%d] ingest: %s -> curated dataset %r", steps, cfg.data.source, cfg.dataset_name)
    version = ingest(cfg)
    logger.info("[2/%d] %s on %s", steps, "sweep" if cfg.tune.enabled else "train", version.id)
    model = train_and_register(cfg, version)
    logger.info("[3/%d] %s", steps, model.decision.summary())
    url = None
    if deploy:
        logger.info(
            "[4/%d] deploy %s@%s with Ray Serve", steps, cfg.model_name, cfg.serve.model_alias
        )
        url = serve.deploy(cfg)
    return PipelineResult(version, model, url)
