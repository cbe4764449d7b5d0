"""Hyperparameter sweeps with Ray Tune over the very same training driver.

Each trial is a Tune function trainable that calls :func:`rayops.train.fit_and_log`. A trial
of one worker runs the training loop in its own process (:mod:`rayops.train.in_process`:
no worker group of its own, each report to Tune); a trial of several workers starts a
TorchTrainer with a ``TuneReportCallback`` (Train V2 cannot be passed to ``Tuner``).
Trials are nested MLflow runs under the sweep's parent run, each tagged with the values it
sampled; ASHA stops weak trials early. The experiment lives
under ``{storage.root}/tune/`` and a record under ``{storage.root}/runs/{pipeline}/sweep/``.

``rayops tune CONFIG --resume`` finishes a sweep whose driver died without rerunning
finished trials, and without reading Tune's experiment state: that state (``tuner.pkl``,
the searcher's) is pickled, and unpickling what a worker may write would let it run code on
the head. The resumed sweep reads MLflow instead: unfinished trials run again under their
own ids and sampled values (Ray Train continues each from its checkpoints, which are JSON,
weights-only tensors or UBJSON), trials never started are sampled anew (Optuna told of every
finished trial's result), and the best trial is picked from every trial's logged metrics.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from rayops import tracking
from rayops.config import ChoiceDim, LogUniformDim, PipelineConfig, RandIntDim, UniformDim
from rayops.data.versions import DatasetVersion, load_version
from rayops.errors import TrainingError
from rayops.runtime import ctrl_c_restored
from rayops.storage import root_of
from rayops.train import ModelInputs, fit_and_log, load_inputs, run_params, trains_in_process
from rayops.train.driver import worker_resources
from rayops.train.records import (
    RunRecord,
    mark_failed,
    new_record,
    resumable,
    runs_folder,
    write_record,
)

logger = logging.getLogger(__name__)

# A trial that starts a worker group (several workers) only waits on it in its own process;
# it must still ask for some resource, so it asks for a little memory, not a CPU the workers
# need. A trial of one worker trains in its own process, which asks for the worker's.
TRIAL_DRIVER_RESOURCES: dict[str, float] = {"CPU": 0, "memory": 256 * 1024**2}


@dataclass(frozen=True)
class SweepOutcome:
    parent_run_id: str
    best_run_id: str
    best_config: dict[str, Any]
    metrics: dict[str, float]
    model_uri: str
    trials: int
    dataset_version: int  # the curated table version every trial trained on


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


def _search_algorithm(cfg: PipelineConfig, told: list[tracking.TrialRun] | None = None) -> Any:
    """Optuna's TPE (told the results of ``told`` trials, when a sweep resumes), or None
    for random and grid search (Tune's own variant generator)."""
    if cfg.tune.search != "optuna":
        return None
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    metric, mode = cfg.target_metric
    known = [t for t in told or [] if metric in t.best and t.config]
    searcher = OptunaSearch(
        metric=metric,
        mode=mode,
        seed=cfg.train.seed,
        points_to_evaluate=[t.config for t in known] or None,
        evaluated_rewards=[t.best[metric] for t in known] or None,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=cfg.tune.max_concurrent_trials)


def _scheduler(cfg: PipelineConfig) -> Any:
    if cfg.tune.scheduler.type == "fifo":
        return FIFOScheduler()
    # max_t one past the last epoch: the trial's final report (its best metrics, after the
    # model is logged) is the one that reaches it, so ASHA never cuts a finishing trial.
    boost = cfg.model.xgboost  # a sweep across families: the longer of the two
    reports = max(cfg.train.epochs, boost.max_rounds // boost.report_every + 1)
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=reports + 1,
        grace_period=min(cfg.tune.scheduler.grace_period, reports),
        reduction_factor=cfg.tune.scheduler.reduction_factor,
    )


# What a trial gets beside its sampled values when a sweep resumes: the id and values of a
# trial that did not finish (run again as itself), or a grid point still to run.
RESUME_KEY = "rayops.resume"
POINT_KEY = "rayops.point"


def sampled_values(config: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(the id of the trial to run again, or None; the values the trial runs with) from
    what Tune hands the trainable."""
    resumed = config.get(RESUME_KEY)
    if resumed is not None:
        return resumed["trial"], dict(resumed["config"])
    values = {k: v for k, v in config.items() if k != POINT_KEY}
    return None, {**values, **config.get(POINT_KEY, {})}


def _trial_run(
    cfg: PipelineConfig,
    version: DatasetVersion,
    sampled: dict[str, Any],
    parent_run_id: str,
    trial_id: str,
) -> str:
    """The trial's MLflow run: the one an earlier attempt left, or a new one."""
    existing = tracking.trial_runs(cfg.tracking, cfg.experiment_name, parent_run_id)
    if trial_id in existing:
        return existing[trial_id]
    return tracking.start_run(
        cfg.tracking,
        cfg.experiment_name,
        f"trial-{trial_id}",
        params={**run_params(cfg, version), "sampled": sampled},
        parent_run_id=parent_run_id,
        tags={
            tracking.TRIAL_TAG: trial_id,
            tracking.DATASET_TAG: version.id,
            tracking.TRIAL_CONFIG_TAG: json.dumps(sampled, sort_keys=True),
        },
    )


def run_trial(
    config: dict[str, Any],
    *,
    base: PipelineConfig,
    version: DatasetVersion,
    inputs: ModelInputs,
    parent_run_id: str,
) -> None:
    """One trial: the base config with the sampled values, trained by the shared driver."""
    resumed, sampled = sampled_values(config)
    cfg = base.with_overrides(sampled)
    trial_id = resumed or tune.get_context().get_trial_id()
    run_id = _trial_run(cfg, version, sampled, parent_run_id, trial_id)
    finished = tracking.finished_with_model(cfg.tracking, run_id)
    if finished is not None:  # done before the sweep's driver died: report, do not retrain
        tune.report(finished)
        return
    tracking.reopen_run(cfg.tracking, run_id)
    # The same run name on a restarted trial resumes it from its stored checkpoints.
    name = f"{cfg.name}-{trial_id}"
    try:
        if trains_in_process(cfg, inputs):  # this process holds the worker's resources
            outcome = fit_and_log(cfg, version, inputs, run_id, name, in_process=tune.report)
        else:
            outcome = fit_and_log(
                cfg, version, inputs, run_id, name, callbacks=[TuneReportCallback()]
            )
    except SystemExit:  # Tune stopped the trial (ASHA) inside one of its reports
        with contextlib.suppress(Exception):
            tracking.end_run(cfg.tracking, run_id, status="KILLED")
        raise
    except BaseException:
        with contextlib.suppress(Exception):  # MLflow may be what failed
            tracking.end_run(cfg.tracking, run_id, status="FAILED")
        raise
    tracking.end_run(cfg.tracking, run_id)
    # The best epoch's metrics as the trial's last result: trials are ranked by their best
    # checkpoint, and a resumed trial whose training had already ended reports here.
    tune.report(outcome.metrics)


def trial_resources(base: PipelineConfig, inputs: ModelInputs, config: dict[str, Any]) -> Any:
    """What a trial's own process asks for: a trial that trains in it (one worker), the
    worker's resources; one that starts a worker group, only a little memory."""
    from ray.tune import PlacementGroupFactory

    cfg = base.with_overrides(sampled_values(config)[1])
    if not trains_in_process(cfg, inputs):
        return PlacementGroupFactory([TRIAL_DRIVER_RESOURCES])
    return PlacementGroupFactory([worker_resources(cfg)])


def _trainable(cfg: PipelineConfig, version: DatasetVersion, parent_run_id: str) -> Any:
    inputs = load_inputs(version)
    trainable = tune.with_parameters(
        run_trial,
        base=cfg,
        version=version,
        inputs=inputs,
        parent_run_id=parent_run_id,
    )
    return tune.with_resources(trainable, functools.partial(trial_resources, cfg, inputs))


def search_record(searcher: Any) -> dict[str, str]:
    """What the search algorithm did, as tags for the sweep's run: for Optuna the sampler
    and how many finished trials it learned from (proof that TPE, not chance, chose)."""
    if searcher is None:
        return {tracking.SAMPLER_TAG: "random/grid (Tune's variant generator)"}
    study = getattr(getattr(searcher, "searcher", searcher), "_ot_study", None)
    if study is None:
        return {tracking.SAMPLER_TAG: type(searcher).__name__}
    from optuna.trial import TrialState

    told = sum(t.state == TrialState.COMPLETE for t in study.trials)
    return {tracking.SAMPLER_TAG: type(study.sampler).__name__, tracking.TRIALS_TOLD_TAG: str(told)}


class TrialLines(tune.Callback):
    """One console line per finished or failed trial (Tune's own tables are off)."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        metric, _ = self.cfg.target_metric
        result = trial.last_result or {}
        value = result.get(metric)
        shown = "n/a" if value is None else f"{value:.4f}"
        resumed, values = sampled_values(trial.config)
        sampled = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
        )
        logger.info(
            "trial %s: best %s %s at epoch %d  (%s)",
            resumed or trial.trial_id,
            metric,
            shown,
            int(result.get("epoch", 0)),
            sampled,
        )

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        logger.warning("trial %s failed (details: %s)", trial.trial_id, trial.error_file)


def _tuner(
    cfg: PipelineConfig,
    version: DatasetVersion,
    parent_run_id: str,
    name: str,
    searcher: Any,
    param_space: dict[str, Any],
    samples: int,
) -> tune.Tuner:
    metric, mode = cfg.target_metric
    storage = root_of(cfg.storage).join("tune")
    return tune.Tuner(
        _trainable(cfg, version, parent_run_id),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            num_samples=samples,
            max_concurrent_trials=cfg.tune.max_concurrent_trials,
            search_alg=searcher,
            scheduler=_scheduler(cfg),
            # one trial process serves trial after trial: no new
            # process (and imports) per trial
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            verbose=0,
            callbacks=[TrialLines(cfg)],
            storage_path=storage.uri if storage.is_local else storage.path,
            storage_filesystem=None if storage.is_local else storage.fs,
        ),
    )


def _fresh(
    cfg: PipelineConfig, version: DatasetVersion, parent_run_id: str, name: str
) -> tuple[tune.Tuner, Any]:
    """The tuner of a new sweep, and its search algorithm."""
    searcher = _search_algorithm(cfg)
    samples = 1 if cfg.tune.search == "grid" else cfg.tune.num_samples  # grid: each once
    return _tuner(cfg, version, parent_run_id, name, searcher, search_space(cfg), samples), searcher


def grid_points(cfg: PipelineConfig) -> list[dict[str, Any]]:
    """Every combination of a grid search's choices (the other dimensions are sampled)."""
    choices = {k: d.values for k, d in cfg.tune.search_space.items() if isinstance(d, ChoiceDim)}
    return [
        dict(zip(choices, combo, strict=True)) for combo in itertools.product(*choices.values())
    ]


def _resumed(
    cfg: PipelineConfig, version: DatasetVersion, record: RunRecord
) -> list[tuple[tune.Tuner, Any]]:
    """The tuners that finish a sweep from what MLflow holds: one runs the trials that did
    not finish again (each as itself, from its checkpoints), one the trials never started."""
    parent = record.run_id
    trials = tracking.sweep_trials(cfg.tracking, cfg.experiment_name, parent)
    if any(not t.config for t in trials if not t.finished):
        raise TrainingError(
            f"sweep {record.name} was started by an older rayops whose "
            "trials did not record their values; start a new sweep"
        )
    tuners, suffix = [], uuid.uuid4().hex[:6]
    again = [{"trial": t.trial_id, "config": t.config} for t in trials if not t.finished]
    if again:
        logger.info(
            "running %d unfinished trial(s) again: %s",
            len(again),
            ", ".join(str(p["trial"]) for p in again),
        )
        space = {RESUME_KEY: tune.grid_search(again)}
        tuners.append(
            (_tuner(cfg, version, parent, f"{record.name}-again-{suffix}", None, space, 1), None)
        )
    if cfg.tune.search == "grid":
        todo = [
            p
            for p in grid_points(cfg)
            if not any(all(t.config.get(k) == v for k, v in p.items()) for t in trials)
        ]
        if todo:
            space = {
                **{
                    k: v
                    for k, v in search_space(cfg).items()
                    if not isinstance(cfg.tune.search_space[k], ChoiceDim)
                },
                POINT_KEY: tune.grid_search(todo),
            }
            tuners.append(
                (_tuner(cfg, version, parent, f"{record.name}-rest-{suffix}", None, space, 1), None)
            )
    elif (left := cfg.tune.num_samples - len(trials)) > 0:
        searcher = _search_algorithm(cfg, [t for t in trials if t.finished])
        tuners.append(
            (
                _tuner(
                    cfg,
                    version,
                    parent,
                    f"{record.name}-rest-{suffix}",
                    searcher,
                    search_space(cfg),
                    left,
                ),
                searcher,
            )
        )
    return tuners


def _best(cfg: PipelineConfig, parent_run_id: str) -> tuple[tracking.TrialRun, int]:
    """The best trial that logged a model (an early-stopped trial logs none), by the
    metrics every trial logged to MLflow; and how many trials the sweep ran."""
    metric, mode = cfg.target_metric
    trials = tracking.sweep_trials(cfg.tracking, cfg.experiment_name, parent_run_id)
    scored = [t for t in trials if t.model_uri and metric in t.best]
    if not scored:
        raise TrainingError(
            f"no trial of the sweep finished with a model; trials: "
            f"{sorted((t.trial_id, t.status) for t in trials)}"
        )
    pick = max if mode == "max" else min
    return pick(scored, key=lambda t: t.best[metric]), len(trials)


def _start(cfg: PipelineConfig, version: DatasetVersion, name: str | None) -> RunRecord:
    parent = tracking.start_run(
        cfg.tracking,
        cfg.experiment_name,
        f"{cfg.name}-sweep",
        params={"tune": cfg.tune.model_dump(mode="json"), **run_params(cfg, version)},
        tags={tracking.DATASET_TAG: version.id, tracking.KIND_TAG: "sweep"},
    )
    return new_record(name or f"{cfg.name}-sweep-{parent[:8]}", parent, version)


def run_sweep(
    cfg: PipelineConfig,
    version: DatasetVersion | None = None,
    resume: bool = False,
    record_name: str | None = None,
) -> SweepOutcome:
    """A tracked sweep; returns the best trial's config, metrics and logged model.
    ``resume`` finishes the last sweep that did not finish (``record_name``: that sweep,
    and its outcome if it finished already); a new sweep takes ``record_name`` as its
    name when given."""
    if not cfg.tune.search_space:
        raise TrainingError("tune.search_space is empty: nothing to sweep")
    tracking.require_reachable(cfg.tracking)
    folder = runs_folder(cfg, "sweep")
    if resume:
        record, version = resumable(cfg, "sweep", record_name)
        if record.finished:
            return _outcome(*_best(cfg, record.run_id), record.run_id, version)
        tuners = _resumed(cfg, version, record)
    else:
        version = version or load_version(cfg)
        record = write_record(folder, _start(cfg, version, record_name))
        tuners = [_fresh(cfg, version, record.run_id, record.name)]
    parent = record.run_id
    try:
        with ctrl_c_restored():
            results = [result for tuner, _ in tuners for result in tuner.fit()]  # type: ignore[attr-defined]
        best, trials = _best(cfg, parent)
    except (KeyboardInterrupt, SystemExit):  # stopped, not failed: `--resume` picks it up
        raise
    except BaseException:
        with contextlib.suppress(Exception):  # MLflow may be what failed
            tracking.close_unfinished_children(cfg.tracking, cfg.experiment_name, parent)
        mark_failed(cfg, folder, record)
        raise
    outcome = _finish(cfg, results, best, trials, parent, version)
    searchers = [searcher for _, searcher in tuners if searcher is not None]
    if searchers or not resume:  # a resume that sampled nothing keeps the sweep's tags
        tracking.set_tags(cfg.tracking, parent, search_record(searchers[-1] if searchers else None))
    write_record(folder, record, status="finished")
    return outcome


def _ended(results: list[Any]) -> set[str]:
    """The trials Tune ended without an error (finished, or stopped by the scheduler), by
    the id their MLflow run carries."""
    ended = set()
    for result in results:
        if result.error is None and result.metrics:
            resumed, _ = sampled_values(result.config or {})
            ended.add(resumed or result.metrics.get("trial_id"))
    return ended


def _finish(
    cfg: PipelineConfig,
    results: list[Any],
    best: tracking.TrialRun,
    trials: int,
    parent: str,
    version: DatasetVersion,
) -> SweepOutcome:
    stopped = tracking.close_unfinished_children(
        cfg.tracking, cfg.experiment_name, parent, _ended(results)
    )
    outcome = _outcome(best, trials, parent, version)
    tracking.log_metrics(
        cfg.tracking, parent, {f"best_{k}": v for k, v in outcome.metrics.items()}, step=0
    )
    tracking.set_tags(
        cfg.tracking,
        parent,
        {tracking.BEST_RUN_TAG: best.run_id, tracking.MODEL_URI_TAG: outcome.model_uri},
    )
    tracking.log_params(cfg.tracking, parent, {f"best.{k}": v for k, v in best.config.items()})
    tracking.end_run(cfg.tracking, parent)
    metric, _ = cfg.target_metric
    logger.info(
        "sweep done: %d trial(s), %d stopped early; best %s %.4f (trial %s)",
        outcome.trials,
        stopped,
        metric,
        outcome.metrics.get(metric, float("nan")),
        best.trial_id,
    )
    return outcome


def _outcome(
    best: tracking.TrialRun, trials: int, parent: str, version: DatasetVersion
) -> SweepOutcome:
    numbers = {k: float(v) for k, v in best.best.items() if k.startswith(("valid_", "train_"))}
    assert best.model_uri is not None
    return SweepOutcome(
        parent, best.run_id, dict(best.config), numbers, best.model_uri, trials, version.version
    )
