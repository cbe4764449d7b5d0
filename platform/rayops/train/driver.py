"""The training driver: build the TorchTrainer, fit, log the best model to MLflow.

Checkpoints go under ``{storage.root}/checkpoints/{run name}`` (local or S3), the best
model's bundle under ``{storage.root}/models/{run name}``. Each run leaves a record
(:mod:`rayops.train.records`), so ``rayops train CONFIG --resume`` continues a run that did
not finish: same run name (Ray Train reloads its checkpoint list), same MLflow run, same data.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import ray.data
from ray.data import ExecutionOptions
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    DataConfig,
    FailureConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

from rayops import tracking
from rayops.config import PipelineConfig
from rayops.data.context import data_context
from rayops.data.preprocess import Preprocessor
from rayops.data.series import SeriesLayout
from rayops.data.versions import DatasetVersion, load_version, version_number
from rayops.errors import TrackingError, TrainingError, one_line, redact
from rayops.families import family_named
from rayops.models import Bundle, LoopConfig, Model
from rayops.models.checkpoints import checkpoints_of, set_aside_broken_snapshot
from rayops.runtime import ctrl_c_restored
from rayops.storage import root_of
from rayops.train.feed import epoch_feed
from rayops.train.in_process import Report, fit_in_process
from rayops.train.records import (
    RunRecord,
    mark_failed,
    new_record,
    resumable,
    runs_folder,
    write_record,
)

logger = logging.getLogger(__name__)

# Ray Train V2's controller takes each worker's report when it polls them, every 2 s by
# default, and a worker's next report waits for that: an epoch of a small table then costs
# 2 s of waiting. Polling every 0.25 s made a 3,200-row epoch 8x faster (2.0 -> 0.25 s).
# The controller reads the variable from the driver's environment; a value the user set wins.
POLL_ENV, POLL_INTERVAL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25"
CACHE_LIMIT_BYTES = 1 << 30  # data_loading=auto keeps a shard in memory below this
LOCAL_LOAD_ROWS = 200_000  # load_inputs reads a dataset this small on the driver


@dataclass(frozen=True)
class TrainOutcome:
    """What a finished training run produced."""

    run_id: str
    metrics: dict[str, float]
    model_uri: str
    checkpoint_path: str
    dataset_version: int  # the curated table version it trained on
    # Where the run's time went, in seconds: "inputs" (the curated rows read as model
    # inputs, by run_training), "train" (the trainer's fit: workers, data,
    # epochs, checkpoints), "model" (the best checkpoint's bundle into storage), "mlflow"
    # (the metrics MLflow lacked and the logged model), "plots". Empty when not measured.
    seconds: dict[str, float] = field(default_factory=dict)


def model_inputs(table: pa.Table, state: dict[str, Any]) -> dict[str, np.ndarray]:
    """Typed curated rows -> the ``features`` matrix and encoded ``label`` the loop eats.
    Validation rows whose class never occurs in training are left out."""
    pre = Preprocessor.from_dict(state)
    label = pre.targets(table)
    keep = pre.rules.known(label)
    return {"features": pre.transform(table.filter(pa.array(keep))), "label": label[keep]}


@dataclass(frozen=True)
class ModelInputs:
    """The model inputs of the curated splits, read once for a run (and shared by every
    trial of a sweep): as arrays in Ray's object store (``in_memory``, one reference per
    split, each worker taking its rows) or as materialized Ray Datasets that Ray Train
    splits between workers."""

    datasets: dict[str, ray.data.Dataset]
    in_memory: dict[str, Any] | None = None


def load_inputs(version: DatasetVersion, local_rows: int = LOCAL_LOAD_ROWS) -> ModelInputs:
    """A dataset of at most ``local_rows`` rows is read and transformed on the driver and
    put in the object store: workers start without Ray Data's split coordinators (seconds a
    run on a small table). A larger one is read by Ray Data across the cluster and
    materialized, so workers read shards without competing with a streaming read for CPUs."""
    state, pre = version.manifest.preprocessor, version.preprocessor
    if sum(version.examples.values()) <= local_rows or pre.interactions is not None:
        return ModelInputs(
            {},
            {
                split: ray.put(
                    model_inputs(pre.examples(version.table(pre.reads_from(split)), split), state)
                )
                for split in ("train", "valid")
            },
        )
    with data_context(preserve_order=True):
        return ModelInputs(
            {
                split: pre.example_dataset(version.read(pre.reads_from(split)), split)
                .map_batches(model_inputs, batch_format="pyarrow", fn_kwargs={"state": state})
                .materialize()
                for split in ("train", "valid")
            }
        )


def worker_resources(cfg: PipelineConfig) -> dict[str, float]:
    """What one training worker holds: its CPUs, a GPU when ``use_gpu``, and any custom
    resources (``train.resources_per_worker``)."""
    resources = {**cfg.train.resources_per_worker, "CPU": cfg.train.cpus_per_worker}
    if cfg.train.use_gpu:
        resources["GPU"] = 1
    return resources


def trains_in_process(cfg: PipelineConfig, inputs: ModelInputs) -> bool:
    """Whether a run of ``cfg`` can train in its caller's process (see
    :mod:`rayops.train.in_process`): one worker, reading inputs from the object store, of
    a family whose loop can."""
    return (
        cfg.train.num_workers == 1
        and inputs.in_memory is not None
        and family_named(cfg.model.family).in_process
    )


def architecture(cfg: PipelineConfig, version: DatasetVersion) -> dict[str, Any]:
    """The model's shape, stored with checkpoints and bundles (``family`` says which)."""
    pre = version.preprocessor
    return family_named(cfg.model.family).architecture(
        cfg, pre.n_features, pre.n_outputs, pre.features
    )


def length_of(cfg: PipelineConfig) -> tuple[int, str]:
    """The most steps a run takes, and what a step is (an MLP's epochs, boosting rounds)."""
    family = family_named(cfg.model.family)
    return family.length(cfg), f"{family.step}s"


def _cache_shards(cfg: PipelineConfig, version: DatasetVersion) -> bool:
    if cfg.train.data_loading != "auto":
        return cfg.train.data_loading == "memory"
    rows = sum(version.examples.values())
    per_shard = rows * (version.preprocessor.n_features + 1) * 4 / cfg.train.num_workers
    return per_shard < CACHE_LIMIT_BYTES


def loop_config(
    cfg: PipelineConfig,
    version: DatasetVersion,
    inputs: ModelInputs,
    run_name: str | None,
    run_id: str | None,
    feed: Any = None,
) -> LoopConfig:
    """What every worker's loop gets: the config, the model's shape, the fitted label and
    preprocessing, where its checkpoints and metrics go (None: nowhere) and its inputs."""
    shape = architecture(cfg, version)
    return LoopConfig(
        cfg,
        shape,
        version.preprocessor.label_state,
        meta={
            "dataset": version.id,
            "architecture": shape,
            "preprocessor": version.manifest.preprocessor,
        },
        run_id=run_id,
        run_name=run_name,
        cache=_cache_shards(cfg, version),
        feed=feed,
        in_memory=inputs.in_memory,
    )


def build_trainer(
    cfg: PipelineConfig,
    version: DatasetVersion,
    inputs: ModelInputs,
    run_name: str,
    run_id: str | None,
    callbacks: Sequence[Any] = (),
    feed: Any = None,
) -> DataParallelTrainer:
    """The trainer for one training run: a TorchTrainer (mlp) or an XGBoostTrainer."""
    metric, mode = cfg.target_metric
    checkpoints = checkpoints_of(cfg)
    set_aside_broken_snapshot(checkpoints.join(run_name))
    resources = worker_resources(cfg)
    loop = loop_config(cfg, version, inputs, run_name, run_id, feed)
    trainer, loop_per_worker = family_named(cfg.model.family).trainer()
    if not inputs.datasets:
        trainer = without_dataset_manager(trainer)
    return trainer(
        loop_per_worker,
        train_loop_config=loop.for_ray(),
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker=resources,
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=checkpoints.path if not checkpoints.is_local else checkpoints.uri,
            storage_filesystem=None if checkpoints.is_local else checkpoints.fs,
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.train.checkpoints_to_keep,
                checkpoint_score_attribute=metric,
                checkpoint_score_order=mode,
            ),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            callbacks=list(callbacks),
        ),
        datasets=inputs.datasets,
        # Blocks reach each worker in a fixed order, so a seed reproduces a run.
        dataset_config=DataConfig(execution_options=_ingest_options()),
    )


def without_dataset_manager(trainer: type[DataParallelTrainer]) -> type[DataParallelTrainer]:
    """``trainer`` without Ray Train's datasets callback, for a run whose tables travel in
    the object store (no Ray Datasets): Ray 2.60 starts a DatasetManager actor, one more
    process per run, even when there is no dataset to split."""
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

    class Trainer(trainer):  # type: ignore[misc, valid-type]
        def _create_default_callbacks(self) -> list[Any]:
            return [
                c
                for c in super()._create_default_callbacks()
                if not isinstance(c, DatasetsCallback)
            ]

    Trainer.__name__ = Trainer.__qualname__ = trainer.__name__
    return Trainer


def _ingest_options() -> ExecutionOptions:
    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def _best_checkpoint(result: Any, metric: str, mode: str) -> tuple[Checkpoint, dict[str, Any]]:
    if result.error is not None:
        raise TrainingError(f"training failed: {result.error}")
    ranked = [(c, m) for c, m in (result.best_checkpoints or []) if metric in m]
    if not ranked:
        raise TrainingError(f"training reported no checkpoint with metric {metric!r}")
    pick = max if mode == "max" else min
    return pick(ranked, key=lambda cm: cm[1][metric])


def _input_example(version: DatasetVersion) -> pd.DataFrame:
    """A plausible raw record (training means, most common categories)."""
    row: dict[str, Any] = {}
    for feat in version.preprocessor.features:
        if feat["kind"] in ("categorical", "text"):
            row[feat["name"]] = feat["categories"][0] if feat["categories"] else None
        elif feat["kind"] == "integer":
            row[feat["name"]] = round(feat["mean"])
        elif feat["kind"] == "boolean":
            row[feat["name"]] = feat["mean"] >= 0.5
        elif feat["kind"] == "datetime":
            row[feat["name"]] = "2024-01-01T00:00:00Z"
        else:
            row[feat["name"]] = round(feat["mean"], 3)
    return pd.DataFrame([row])


def _trained_model(cfg: PipelineConfig, version: DatasetVersion, checkpoint: Checkpoint) -> Model:
    with checkpoint.as_directory() as folder:
        return family_named(cfg.model.family).trained_model(
            Path(folder), architecture(cfg, version)
        )


def bundle_of(
    cfg: PipelineConfig,
    version: DatasetVersion,
    model: Model,
    metrics: dict[str, float],
    run_id: str,
) -> Bundle:
    """``model`` as the bundle a run of ``cfg`` on ``version`` saves."""
    meta = {
        "architecture": architecture(cfg, version),
        "preprocessor": version.manifest.preprocessor,
        "schema": version.manifest.columns,
        "dataset": version.id,
        "metrics": metrics,
        "run_id": run_id,
        "pipeline": cfg.name,
        "target_metric": cfg.target_metric[0],
    }
    return Bundle(model, meta)


def fit_and_log(
    cfg: PipelineConfig,
    version: DatasetVersion,
    inputs: ModelInputs,
    run_id: str,
    run_name: str,
    callbacks: Sequence[Any] = (),
    in_process: Report | None = None,
) -> TrainOutcome:
    """Train, pick the best checkpoint, save its model bundle to storage, then complete the
    MLflow run: every epoch's metrics it lacks, the model, the plots.

    ``in_process`` given (a run of one worker whose inputs travel in the object store, see
    :func:`trains_in_process`): the loop runs in this process instead of on a Ray Train
    worker group, and each of its reports also goes to ``in_process``.

    Training never waits on MLflow; when MLflow fails after training, the error says what
    was not logged and ``--resume`` logs it without retraining (the trainer's name is
    the same, so Ray Train finds the finished checkpoints and trains no further)."""
    metric, mode = cfg.target_metric
    os.environ.setdefault(POLL_ENV, POLL_INTERVAL_S)
    cfg = sized_for(cfg, version)
    seconds: dict[str, float] = {}
    with timed(seconds, "train"):
        if in_process is not None:
            loop = loop_config(cfg, version, inputs, run_name, run_id).for_ray()
            result: Any = fit_in_process(cfg, loop, run_name, in_process)
        elif trains_in_process(cfg, inputs):
            result = _fit_in_a_task(cfg, version, inputs, run_name, run_id)
        else:
            with epoch_feed(cfg) as feed, ctrl_c_restored():
                trainer = build_trainer(cfg, version, inputs, run_name, run_id, callbacks, feed)
                result = trainer.fit()
    checkpoint, best = _best_checkpoint(result, metric, mode)
    numbers = {
        k: float(v)
        for k, v in best.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    saved = root_of(cfg.storage).join("models", run_name)
    with tempfile.TemporaryDirectory(prefix="rayops-") as folder:
        with timed(seconds, "model"):
            model = _trained_model(cfg, version, checkpoint)
            bundle = bundle_of(cfg, version, model, numbers, run_id)
            # The newest checkpoint holds every epoch's metrics so far.
            history = family_named(cfg.model.family).history(cfg, run_name, result.checkpoint)
            bundle_dir = bundle.save(Path(folder) / "bundle")
            saved.upload_dir(bundle_dir)
        try:
            model_uri = _complete_run(cfg, version, run_id, bundle, bundle_dir, history, seconds)
        except Exception as exc:
            raise _not_logged(cfg, run_name, len(history), saved.uri, exc) from exc
    return TrainOutcome(run_id, numbers, model_uri, checkpoint.path, version.version, seconds)


def _fit_in_a_task(
    cfg: PipelineConfig,
    version: DatasetVersion,
    inputs: ModelInputs,
    run_name: str,
    run_id: str | None,
) -> Any:
    """A run of one worker: its loop in one Ray task holding the worker's resources (no
    controller, placement group or worker group to start). A task whose process dies runs
    again and continues from the run's newest stored checkpoint, ``train.max_failures``
    times; a loop that fails, the same (:func:`fit_in_process`)."""
    resources = worker_resources(cfg)
    train = ray.remote(fit_in_process).options(
        num_cpus=resources.pop("CPU"),
        num_gpus=resources.pop("GPU", 0),
        resources=resources or None,
        max_retries=cfg.train.max_failures,
        retry_exceptions=False,
        name=f"train:{run_name}",
    )
    with epoch_feed(cfg) as feed, ctrl_c_restored():
        loop = loop_config(cfg, version, inputs, run_name, run_id, feed).for_ray()
        done = train.remote(cfg, loop, run_name, None)
        try:
            return ray.get(done)
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as exc:
            raise TrainingError(
                f"training failed: its worker process died beyond train.max_failures "
                f"({cfg.train.max_failures}): {one_line(exc)}"
            ) from exc
        except (KeyboardInterrupt, SystemExit):
            # Stopped here (Ctrl-C): the task is never left running. Only then: Ray 2.60
            # crashes this process when a cancel races the task's own end or retry
            # ("Tried to complete task that was not pending", ray#54527), so any other
            # error leaves the task to Ray, and one that has just ended is not cancelled.
            if not ray.wait([done], timeout=0)[0]:
                ray.cancel(done, force=True)
            raise


@contextlib.contextmanager
def timed(seconds: dict[str, float], part: str) -> Iterator[None]:
    """Add the block's wall time to ``seconds[part]``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[part] = seconds.get(part, 0.0) + time.perf_counter() - started


def _not_logged(
    cfg: PipelineConfig, run_name: str, epochs: int, saved: str, exc: Exception
) -> TrackingError:
    return TrackingError(
        f"{run_name} trained {epochs} epoch(s); its checkpoints and model bundle ({saved}) "
        f"are in storage, but MLflow at {redact(cfg.tracking.uri)} failed ({one_line(exc)}): "
        "the epoch metrics it lacks, the model and its plots are not logged. Once MLflow "
        "answers, `--resume` logs them without retraining."
    )


def _complete_run(
    cfg: PipelineConfig,
    version: DatasetVersion,
    run_id: str,
    bundle: Bundle,
    bundle_dir: Path,
    history: list[dict[str, float]],
    seconds: dict[str, float],
) -> str:
    """Log what the MLflow run lacks; returns the model URI (``seconds``: where the time
    went, see :class:`TrainOutcome`)."""
    from rayops import evaluate

    with timed(seconds, "mlflow"):
        tracking.require_reachable(cfg.tracking)
        logged = set(tracking.logged_steps(cfg.tracking, run_id))
        missing = {int(h["epoch"]): h for h in history if int(h["epoch"]) not in logged}
        if missing:
            logger.info(
                "Logging %d epoch(s) of metrics MLflow did not get during training", len(missing)
            )
            tracking.log_history(cfg.tracking, run_id, missing)
        model_uri = tracking.logged_model_uri(cfg.tracking, run_id) or log_bundle(
            cfg, version, run_id, bundle_dir, bundle.family
        )
        numbers = bundle.meta["metrics"]
        tracking.log_metrics(
            cfg.tracking,
            run_id,
            {f"best_{k}": v for k, v in numbers.items()},
            step=int(numbers.get("epoch", 0)),
        )
    with timed(seconds, "plots"):
        evaluate.log_plots(cfg, run_id, bundle, version)
    return model_uri


def log_bundle(
    cfg: PipelineConfig, version: DatasetVersion, run_id: str, bundle_dir: Path, family: str
) -> str:
    """Log a saved bundle as the MLflow model of ``run_id``: its input signature and example
    from ``version``, the family's pip requirements. Returns the model URI."""
    example, required = model_input(version)
    return tracking.log_model(
        cfg.tracking, run_id, bundle_dir, example, required, family_named(family).pip_requirements()
    )


def model_input(version: DatasetVersion) -> tuple[pd.DataFrame, dict[str, bool]]:
    """What the MLflow model reads: an example, and whether each column must be present.
    A tabular model reads records of its features; a forecaster reads observations of a
    series (the label given where known, left empty at the steps to forecast)."""
    columns = version.manifest.columns
    label = version.preprocessor.label
    if version.preprocessor.interactions is not None:
        return _interactions_example(version)
    if version.preprocessor.series is None:
        return _input_example(version), {
            name: not spec["nullable"] for name, spec in columns.items() if name != label
        }
    layout = SeriesLayout.from_dict(version.preprocessor.series["layout"])
    first = version.table(version.preprocessor.reads_from("valid"), limit=1)
    one = version.rows_where({s: first.column(s)[0].as_py() for s in layout.series})
    # one series' last steps: enough history for its lags, and the step after them
    rows = one.sort_by(layout.timestamp).to_pandas().tail(layout.lookback + 1)
    rows = rows.reset_index(drop=True)
    for name, spec in columns.items():
        if spec["type"] == "datetime":
            rows[name] = rows[name].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    rows.loc[rows.index[-1], label] = None  # the step to forecast
    return rows[list(columns)], {
        name: not spec["nullable"] and name != label for name, spec in columns.items()
    }


def _interactions_example(version: DatasetVersion) -> tuple[pd.DataFrame, dict[str, bool]]:
    """A recommender reads a user's interactions: one user's, as curated."""
    columns = version.manifest.columns
    user = version.preprocessor.layout.user
    first = version.table(version.preprocessor.reads_from("valid"), limit=1)
    rows = version.rows_where({user: first.column(user)[0].as_py()}).to_pandas()
    for name, spec in columns.items():
        if spec["type"] == "datetime":
            rows[name] = rows[name].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return rows[list(columns)].reset_index(drop=True), {
        name: not spec["nullable"] for name, spec in columns.items()
    }


def sized_for(cfg: PipelineConfig, version: DatasetVersion) -> PipelineConfig:
    """``cfg`` with what the training rows decide when left out written in: the batch size
    and the batches per optimizer step."""
    train = cfg.train
    if train.batch_size is not None and train.accumulate_grad_batches is not None:
        return cfg
    rows = version.examples["train"]
    return cfg.with_overrides(
        {
            "train.batch_size": train.batch_for(rows),
            "train.accumulate_grad_batches": train.accumulation_for(rows),
        }
    )


def run_params(cfg: PipelineConfig, version: DatasetVersion) -> dict[str, Any]:
    """What a training run logs as MLflow params (flattened later), with the batch size and
    batches per step this run's rows decide."""
    return {
        "model": cfg.model.model_dump(),
        "train": sized_for(cfg, version).train.model_dump(),
        "data": {
            "dataset_version": version.id,
            "dataset_uri": version.uri,
            "task": cfg.data.task,
            "label": cfg.data.label,
            "features": ",".join(cfg.data.feature_names),
        },
        "dataset_rows": version.manifest.rows.model_dump(),
    }


def run_training(
    cfg: PipelineConfig,
    version: DatasetVersion | None = None,
    resume: bool = False,
    record_name: str | None = None,
) -> TrainOutcome:
    """One tracked training run; ``resume`` continues the last one that did not finish
    (``record_name``: that run, and its outcome if it finished already). A new run takes
    ``record_name`` as its name when given."""
    tracking.require_reachable(cfg.tracking)
    folder = runs_folder(cfg, "train")
    if resume:
        record, version = resumable(cfg, "train", record_name)
        if record.finished:
            return _finished_outcome(cfg, record)
    else:
        version = version or load_version(cfg)
        run_id = tracking.start_run(
            cfg.tracking,
            cfg.experiment_name,
            f"{cfg.name}-train",
            params=run_params(cfg, version),
            tags={tracking.DATASET_TAG: version.id},
        )
        name = record_name or f"{cfg.name}-train-{run_id[:8]}-{uuid.uuid4().hex[:4]}"
        record = write_record(folder, new_record(name, run_id, version))
    logger.info(
        "training %s: %s, %d worker(s), up to %d %s, %s",
        record.name,
        cfg.model.family,
        cfg.train.num_workers,
        *length_of(cfg),
        version.id,
    )
    try:
        loading = time.perf_counter()
        inputs = load_inputs(version)
        loaded = time.perf_counter() - loading
        outcome = fit_and_log(cfg, version, inputs, record.run_id, record.name)
        outcome.seconds["inputs"] = loaded
    except (KeyboardInterrupt, SystemExit):  # stopped, not failed: `--resume` picks it up
        raise
    except BaseException:
        mark_failed(cfg, folder, record)
        raise
    tracking.end_run(cfg.tracking, record.run_id)
    write_record(folder, record, status="finished")
    return outcome


def _finished_outcome(cfg: PipelineConfig, record: RunRecord) -> TrainOutcome:
    """What a run that finished before its caller stopped produced, from MLflow."""
    run_id = record.run_id
    metrics = tracking.finished_with_model(cfg.tracking, run_id)
    model_uri = tracking.logged_model_uri(cfg.tracking, run_id)
    if metrics is None or model_uri is None:
        raise TrainingError(
            f"run {record.name} is recorded as finished but MLflow run {run_id} holds no model"
        )
    return TrainOutcome(run_id, metrics, model_uri, "", version_number(record.dataset_version))
