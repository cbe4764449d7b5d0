"""Hyperparameter sweeps with Ray Tune over the very same training driver.

Each trial is a Tune function trainable that calls :func:`rayops.train.fit_and_log` with a
``TuneReportCallback`` (Train V2 cannot be passed to ``Tuner`` directly). Trials are nested
MLflow runs under the sweep's parent run; ASHA stops weak trials early.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import ray.data
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from rayops import tracking
from rayops.config import ChoiceDim, LogUniformDim, PipelineConfig, RandIntDim, UniformDim
from rayops.data.versions import DatasetVersion, load_version
from rayops.errors import TrainingError
from rayops.storage import root_of
from rayops.train import fit_and_log, load_datasets, run_params

logger = logging.getLogger(__name__)

# The trial's own process only waits on its TorchTrainer; it must still ask for some
# resource, so it asks for a little memory instead of a CPU the workers need.
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 256 * 1024**2}


@dataclass(frozen=True)
class SweepOutcome:
    parent_run_id: str
    best_run_id: str
    best_config: dict[str, Any]
    metrics: dict[str, float]
    model_uri: str
    trials: int


def search_space(cfg: PipelineConfig) -> dict[str, Any]:
    """The config's search space as Tune distributions, keyed by dotted config keys."""
    space: dict[str, Any] = {}
    for key, dim in cfg.tune.search_space.items():
        if isinstance(dim, UniformDim):
            space[key] = tune.uniform(dim.low, dim.high)
        elif isinstance(dim, LogUniformDim):
            space[key] = tune.loguniform(dim.low, dim.high)
        elif isinstance(dim, RandIntDim):
            space[key] = tune.randint(dim.low, dim.high)
        elif isinstance(dim, ChoiceDim):
            space[key] = tune.choice(dim.values)
    return space


def _scheduler(cfg: PipelineConfig) -> Any:
    if cfg.tune.scheduler.type == "fifo":
        return FIFOScheduler()
    # max_t one past the last epoch: at max_t ASHA stops the trial, which would kill the
    # trial before it logs its model after the final report.
    return ASHAScheduler(time_attr="training_iteration", max_t=cfg.train.epochs + 1,
                         grace_period=min(cfg.tune.scheduler.grace_period, cfg.train.epochs),
                         reduction_factor=cfg.tune.scheduler.reduction_factor)


def run_trial(config: dict[str, Any], *, base: PipelineConfig, version: DatasetVersion,
              datasets: dict[str, ray.data.Dataset], parent_run_id: str) -> None:
    """One trial: the base config with the sampled values, trained by the shared driver."""
    cfg = base.with_overrides(config)
    trial_id = tune.get_context().get_trial_id()
    run_id = tracking.start_run(
        cfg.tracking, cfg.experiment_name, f"trial-{trial_id}",
        params={**run_params(cfg, version), "sampled": config},
        parent_run_id=parent_run_id,
        tags={tracking.TRIAL_TAG: trial_id, "rayops.dataset_version": version.id},
    )
    try:
        fit_and_log(cfg, version, datasets, run_id, f"{cfg.name}-{trial_id}",
                    callbacks=[TuneReportCallback()])
    except BaseException:
        tracking.end_run(cfg.tracking, run_id, status="FAILED")
        raise
    tracking.end_run(cfg.tracking, run_id)


def _tuner(cfg: PipelineConfig, version: DatasetVersion, parent_run_id: str) -> tune.Tuner:
    metric, mode = cfg.target_metric
    trainable = tune.with_parameters(run_trial, base=cfg, version=version,
                                     datasets=load_datasets(version),
                                     parent_run_id=parent_run_id)
    storage = root_of(cfg.storage).join("tune")
    return tune.Tuner(
        tune.with_resources(trainable, TRIAL_DRIVER_RESOURCES),
        param_space=search_space(cfg),
        tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=cfg.tune.num_samples,
                                    max_concurrent_trials=cfg.tune.max_concurrent_trials,
                                    scheduler=_scheduler(cfg)),
        run_config=tune.RunConfig(
            name=f"{cfg.name}-sweep-{parent_run_id[:8]}",
            storage_path=storage.uri if storage.is_local else storage.path,
            storage_filesystem=None if storage.is_local else storage.fs,
        ),
    )


def _best(cfg: PipelineConfig, results: Any, parent_run_id: str) -> tuple[Any, str, str]:
    """Best trial that logged a model (an early-stopped trial logs none)."""
    metric, mode = cfg.target_metric
    models = tracking.trial_models(cfg.tracking, cfg.experiment_name, parent_run_id)
    scored = [r for r in results if r.metrics and metric in r.metrics
              and r.metrics.get("trial_id") in models]
    if not scored:
        raise TrainingError(f"no trial of the sweep finished with a model; errors: "
                            f"{[str(r.error) for r in results if r.error]}")
    pick = max if mode == "max" else min
    best = pick(scored, key=lambda r: r.metrics[metric])
    run_id, model_uri = models[best.metrics["trial_id"]]
    return best, run_id, model_uri


def run_sweep(cfg: PipelineConfig, version: DatasetVersion | None = None) -> SweepOutcome:
    """A tracked sweep; returns the best trial's config, metrics and logged model."""
    if not cfg.tune.search_space:
        raise TrainingError("tune.search_space is empty: nothing to sweep")
    version = version or load_version(cfg)
    parent = tracking.start_run(
        cfg.tracking, cfg.experiment_name, f"{cfg.name}-sweep",
        params={"tune": cfg.tune.model_dump(mode="json"), **run_params(cfg, version)},
        tags={"rayops.dataset_version": version.id, "rayops.kind": "sweep"},
    )
    try:
        results = _tuner(cfg, version, parent).fit()
        best, best_run, model_uri = _best(cfg, results, parent)
    except BaseException:
        tracking.close_unfinished_children(cfg.tracking, cfg.experiment_name, parent)
        tracking.end_run(cfg.tracking, parent, status="FAILED")
        raise
    stopped = tracking.close_unfinished_children(cfg.tracking, cfg.experiment_name, parent)
    metric, _ = cfg.target_metric
    numbers = {k: float(v) for k, v in best.metrics.items()
               if isinstance(v, (int, float)) and k.startswith(("valid_", "train_"))}
    tracking.log_metrics(cfg.tracking, parent, {f"best_{k}": v for k, v in numbers.items()},
                         step=0)
    client = tracking.client(cfg.tracking)
    client.set_tag(parent, "rayops.best_run_id", best_run)
    client.set_tag(parent, tracking.MODEL_URI_TAG, model_uri)
    for key, value in best.config.items():
        client.log_param(parent, f"best.{key}", str(value))
    tracking.end_run(cfg.tracking, parent)
    logger.info("Sweep done: %d trials (%d stopped early); best %s=%.4f with %s",
                len(results), stopped, metric, numbers.get(metric, float("nan")), best.config)
    return SweepOutcome(parent, best_run, dict(best.config), numbers, model_uri, len(results))
