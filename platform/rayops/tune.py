"""Hyperparameter sweeps with Ray Tune over the very same training driver.

Each trial is a Tune function trainable that calls :func:`rayops.train.fit_and_log` with a
``TuneReportCallback`` (Train V2 cannot be passed to ``Tuner`` directly); a trial may itself
be a multi-worker TorchTrainer. Trials are nested MLflow runs under the sweep's parent run;
ASHA stops weak trials early. The experiment lives under ``{storage.root}/tune/`` and a
record under ``{storage.root}/runs/{pipeline}/sweep/``, so ``rayops tune CONFIG --resume``
finishes a sweep whose driver died without rerunning finished trials.
"""

from __future__ import annotations

import contextlib
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
from rayops.train.records import mark_failed, new_record, resumable, runs_folder, write_record

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


def _distribution(dim: Any, grid: bool) -> Any:
    if isinstance(dim, ChoiceDim):
        return tune.grid_search(dim.values) if grid else tune.choice(dim.values)
    if isinstance(dim, UniformDim):
        return tune.uniform(dim.low, dim.high)
    if isinstance(dim, LogUniformDim):
        return tune.loguniform(dim.low, dim.high)
    assert isinstance(dim, RandIntDim)
    return tune.randint(dim.low, dim.high)


def search_space(cfg: PipelineConfig) -> dict[str, Any]:
    """The config's search space as Tune distributions, keyed by dotted config keys."""
    grid = cfg.tune.search == "grid"
    return {key: _distribution(dim, grid) for key, dim in cfg.tune.search_space.items()}


def _search_algorithm(cfg: PipelineConfig) -> Any:
    if cfg.tune.search != "optuna":
        return None  # random sampling and grid search are Tune's built-in variant generator
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    metric, mode = cfg.target_metric
    searcher = OptunaSearch(metric=metric, mode=mode, seed=cfg.train.seed)
    return ConcurrencyLimiter(searcher, max_concurrent=cfg.tune.max_concurrent_trials)


def _scheduler(cfg: PipelineConfig) -> Any:
    if cfg.tune.scheduler.type == "fifo":
        return FIFOScheduler()
    # max_t one past the last epoch: the trial's final report (its best metrics, after the
    # model is logged) is the one that reaches it, so ASHA never cuts a finishing trial.
    boost = cfg.model.xgboost  # a sweep across families: the longer of the two
    reports = max(cfg.train.epochs, boost.max_rounds // boost.report_every + 1)
    return ASHAScheduler(time_attr="training_iteration", max_t=reports + 1,
                         grace_period=min(cfg.tune.scheduler.grace_period, reports),
                         reduction_factor=cfg.tune.scheduler.reduction_factor)


def _trial_run(cfg: PipelineConfig, version: DatasetVersion, config: dict[str, Any],
               parent_run_id: str, trial_id: str) -> str:
    """The trial's MLflow run: the one an earlier attempt left, or a new one."""
    existing = tracking.trial_runs(cfg.tracking, cfg.experiment_name, parent_run_id)
    if trial_id in existing:
        return existing[trial_id]
    return tracking.start_run(
        cfg.tracking, cfg.experiment_name, f"trial-{trial_id}",
        params={**run_params(cfg, version), "sampled": config}, parent_run_id=parent_run_id,
        tags={tracking.TRIAL_TAG: trial_id, "rayops.dataset_version": version.id},
    )


def run_trial(config: dict[str, Any], *, base: PipelineConfig, version: DatasetVersion,
              datasets: dict[str, ray.data.Dataset], parent_run_id: str) -> None:
    """One trial: the base config with the sampled values, trained by the shared driver."""
    cfg = base.with_overrides(config)
    trial_id = tune.get_context().get_trial_id()
    run_id = _trial_run(cfg, version, config, parent_run_id, trial_id)
    finished = tracking.finished_with_model(cfg.tracking, run_id)
    if finished is not None:  # done before the sweep's driver died: report, do not retrain
        tune.report(finished)
        return
    tracking.client(cfg.tracking).update_run(run_id, status="RUNNING")
    try:
        # The same trainer name on a restarted trial lets Ray Train resume its checkpoint.
        outcome = fit_and_log(cfg, version, datasets, run_id, f"{cfg.name}-{trial_id}",
                              callbacks=[TuneReportCallback()])
    except BaseException:
        with contextlib.suppress(Exception):  # MLflow may be what failed
            tracking.end_run(cfg.tracking, run_id, status="FAILED")
        raise
    tracking.end_run(cfg.tracking, run_id)
    # The best epoch's metrics as the trial's last result: trials are ranked by their best
    # checkpoint, and a resumed trial whose training had already ended reports here.
    tune.report(outcome.metrics)


def _trainable(cfg: PipelineConfig, version: DatasetVersion, parent_run_id: str) -> Any:
    trainable = tune.with_parameters(run_trial, base=cfg, version=version,
                                     datasets=load_datasets(version),
                                     parent_run_id=parent_run_id)
    return tune.with_resources(trainable, TRIAL_DRIVER_RESOURCES)


def search_record(searcher: Any) -> dict[str, str]:
    """What the search algorithm did, as tags for the sweep's run: for Optuna the sampler
    and how many finished trials it learned from (proof that TPE, not chance, chose)."""
    if searcher is None:
        return {"rayops.search.sampler": "random/grid (Tune's variant generator)"}
    study = getattr(getattr(searcher, "searcher", searcher), "_ot_study", None)
    if study is None:
        return {"rayops.search.sampler": type(searcher).__name__}
    from optuna.trial import TrialState

    told = sum(t.state == TrialState.COMPLETE for t in study.trials)
    return {"rayops.search.sampler": type(study.sampler).__name__,
            "rayops.search.trials_told": str(told)}


class TrialLines(tune.Callback):
    """One console line per finished or failed trial (Tune's own tables are off)."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        metric, _ = self.cfg.target_metric
        result = trial.last_result or {}
        value = result.get(metric)
        shown = "n/a" if value is None else f"{value:.4f}"
        sampled = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in trial.config.items())
        logger.info("trial %s: best %s %s at epoch %d  (%s)", trial.trial_id, metric, shown,
                    int(result.get("epoch", 0)), sampled)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any,
                       **info: Any) -> None:
        logger.warning("trial %s failed (details: %s)", trial.trial_id, trial.error_file)


def _tuner(cfg: PipelineConfig, version: DatasetVersion, parent_run_id: str, name: str,
           searcher: Any) -> tune.Tuner:
    metric, mode = cfg.target_metric
    storage = root_of(cfg.storage).join("tune")
    samples = 1 if cfg.tune.search == "grid" else cfg.tune.num_samples  # grid: each once
    return tune.Tuner(
        _trainable(cfg, version, parent_run_id),
        param_space=search_space(cfg),
        tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=samples,
                                    max_concurrent_trials=cfg.tune.max_concurrent_trials,
                                    search_alg=searcher,
                                    scheduler=_scheduler(cfg),
                                    # one trial process serves trial after trial: no new
                                    # process (and imports) per trial
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=name, verbose=0, callbacks=[TrialLines(cfg)],
            storage_path=storage.uri if storage.is_local else storage.path,
            storage_filesystem=None if storage.is_local else storage.fs,
        ),
    )


def _restored(cfg: PipelineConfig, version: DatasetVersion, record: dict[str, Any]
              ) -> tune.Tuner:
    storage = root_of(cfg.storage).join("tune", record["name"])
    path, fs = (storage.uri, None) if storage.is_local else (storage.path, storage.fs)
    if not tune.Tuner.can_restore(path, storage_filesystem=fs):
        raise TrainingError(f"the sweep at {storage.uri} cannot be restored")
    return tune.Tuner.restore(path, _trainable(cfg, version, record["run_id"]),
                              resume_unfinished=True, resume_errored=True,
                              storage_filesystem=fs)


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


def _start(cfg: PipelineConfig, version: DatasetVersion) -> dict[str, Any]:
    parent = tracking.start_run(
        cfg.tracking, cfg.experiment_name, f"{cfg.name}-sweep",
        params={"tune": cfg.tune.model_dump(mode="json"), **run_params(cfg, version)},
        tags={"rayops.dataset_version": version.id, "rayops.kind": "sweep"},
    )
    return new_record(f"{cfg.name}-sweep-{parent[:8]}", parent, version)


def run_sweep(cfg: PipelineConfig, version: DatasetVersion | None = None,
              resume: bool = False) -> SweepOutcome:
    """A tracked sweep; returns the best trial's config, metrics and logged model.
    ``resume`` finishes the last sweep that did not finish."""
    if not cfg.tune.search_space:
        raise TrainingError("tune.search_space is empty: nothing to sweep")
    tracking.require_reachable(cfg.tracking)
    folder = runs_folder(cfg, "sweep")
    searcher = None
    if resume:
        record, version = resumable(cfg, "sweep")
        tuner = _restored(cfg, version, record)
    else:
        version = version or load_version(cfg)
        record = write_record(folder, _start(cfg, version))
        searcher = _search_algorithm(cfg)
        tuner = _tuner(cfg, version, record["run_id"], record["name"], searcher)
    parent = record["run_id"]
    try:
        results = tuner.fit()
        best, best_run, model_uri = _best(cfg, results, parent)
    except (KeyboardInterrupt, SystemExit):  # stopped, not failed: `--resume` picks it up
        raise
    except BaseException:
        with contextlib.suppress(Exception):  # MLflow may be what failed
            tracking.close_unfinished_children(cfg.tracking, cfg.experiment_name, parent)
        mark_failed(cfg, folder, record)
        raise
    outcome = _finish(cfg, results, best, best_run, model_uri, parent)
    if not resume:  # a restored sweep's searcher lives inside Tune's experiment state
        client = tracking.client(cfg.tracking)
        for key, value in search_record(searcher).items():
            client.set_tag(parent, key, value)
    write_record(folder, record, status="finished")
    return outcome


def _finish(cfg: PipelineConfig, results: Any, best: Any, best_run: str, model_uri: str,
            parent: str) -> SweepOutcome:
    ended = {r.metrics.get("trial_id") for r in results if r.error is None and r.metrics}
    stopped = tracking.close_unfinished_children(cfg.tracking, cfg.experiment_name, parent,
                                                 ended)
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
    logger.info("sweep done: %d trial(s), %d stopped early; best %s %.4f (trial %s)",
                len(results), stopped, metric, numbers.get(metric, float("nan")),
                best.metrics.get("trial_id"))
    return SweepOutcome(parent, best_run, dict(best.config), numbers, model_uri, len(results))
