"""MLflow runs: a training run and its nested sweep trials, their params, metrics and
models. Models are logged as MLflow pyfunc models-from-code (``rayops/mlflow_model.py``)
around a rayops bundle, so ``mlflow.pyfunc.load_model`` works and loading never unpickles
anything."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from rayops import __version__
from rayops.config import TrackingConfig
from rayops.tracking.client import client, experiment_id
from rayops.tracking.tags import (
    MODEL_URI_TAG,
    STOPPED_TAG,
    TRIAL_CONFIG_TAG,
    TRIAL_TAG,
    VERSION_TAG,
)

logger = logging.getLogger(__name__)

_MODEL_CODE = Path(__file__).parents[1] / "mlflow_model.py"


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"epochs": 3}}`` -> ``{"train.epochs": "3"}`` for MLflow params."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = str(value)[:6000]
    return flat


def start_run(
    tracking: TrackingConfig,
    experiment: str,
    run_name: str,
    params: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Create a run (nested under ``parent_run_id`` if given) and log its params."""
    from mlflow.entities import Param

    mlflow_client = client(tracking)
    all_tags = {"mlflow.runName": run_name, VERSION_TAG: __version__, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = mlflow_client.create_run(
        experiment_id(tracking, experiment), tags=all_tags, run_name=run_name
    )
    run_id = run.info.run_id
    flat = flatten(params or {})
    items = [Param(k, v) for k, v in flat.items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        mlflow_client.log_batch(run_id, params=items[start : start + 100])
    return run_id


def _numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def log_metrics(
    tracking: TrackingConfig,
    run_id: str,
    metrics: Mapping[str, float],
    step: int,
    attempts: int = 5,
    timestamp_ms: int | None = None,
) -> None:
    """Log numeric metrics at ``step``; retried because sqlite can be briefly locked.
    A caller that sends the same metrics again gives the same ``timestamp_ms``: MLflow then
    stores them once, also when the first send landed and only its answer was lost."""
    log_history(tracking, run_id, {step: metrics}, attempts, timestamp_ms)


def log_history(
    tracking: TrackingConfig,
    run_id: str,
    history: Mapping[int, Mapping[str, float]],
    attempts: int = 5,
    timestamp_ms: int | None = None,
) -> None:
    """Log several steps' metrics in batches of at most 1000 values (MLflow's limit), at
    ``timestamp_ms`` (default: now)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    batch = [
        Metric(k, v, now, step)
        for step, metrics in history.items()
        for k, v in _numeric(metrics).items()
    ]
    for start in range(0, len(batch), 1000):
        for attempt in range(attempts):
            try:
                client(tracking).log_batch(run_id, metrics=batch[start : start + 1000])
                break
            except Exception:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))


def logged_steps(tracking: TrackingConfig, run_id: str, key: str = "epoch") -> list[int]:
    """The steps at which ``key`` was logged on the run, in logging order."""
    return [m.step for m in client(tracking).get_metric_history(run_id, key)]


def metric_name(text: str) -> str:
    """A string MLflow accepts as a metric key (letters, digits, _ - . / and spaces)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", text)[:250]


def log_dict(
    tracking: TrackingConfig, run_id: str, value: Mapping[str, Any], artifact_file: str
) -> None:
    client(tracking).log_dict(run_id, dict(value), artifact_file)


def end_run(tracking: TrackingConfig, run_id: str, status: str = "FINISHED") -> None:
    client(tracking).set_terminated(run_id, status=status)


def input_signature(columns: Mapping[str, bool]) -> Any:
    """The MLflow signature: feature names and whether each is required (non-nullable).

    Types are left open (``any``): rayops validates values itself with messages that name
    the record and field, and MLflow would refuse e.g. an int for a float column.
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    return ModelSignature(
        inputs=Schema(
            [ColSpec(AnyType(), name, required=required) for name, required in columns.items()]
        )
    )


def log_model(
    tracking: TrackingConfig,
    run_id: str,
    bundle_dir: Path,
    input_example: pd.DataFrame,
    required: Mapping[str, bool],
    requirements: Sequence[str] = (),
) -> str:
    """Log a bundle as an MLflow pyfunc model on ``run_id``; returns the model URI.

    ``required`` maps each input column to whether it must be present (non-nullable);
    ``requirements`` are pip requirements the model family adds to rayops and torch.
    """
    import mlflow
    import torch

    client(tracking)
    torch_version = torch.__version__.split("+")[0]
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(_MODEL_CODE),
            artifacts={"bundle": str(bundle_dir)},
            input_example=input_example,
            signature=input_signature(required),
            pip_requirements=[f"rayops=={__version__}", f"torch=={torch_version}", *requirements],
        )
    client(tracking).set_tag(run_id, MODEL_URI_TAG, info.model_uri)
    return info.model_uri


def logged_model_uri(tracking: TrackingConfig, run_id: str) -> str | None:
    """The model a run already logged (a resumed run does not log it twice)."""
    return client(tracking).get_run(run_id).data.tags.get(MODEL_URI_TAG)


def runs_tagged(tracking: TrackingConfig, experiment: str, tags: Mapping[str, str]) -> list[str]:
    """Ids of the experiment's runs that carry every one of ``tags``."""
    clauses = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client(tracking).search_runs([experiment_id(tracking, experiment)], clauses)
    return [r.info.run_id for r in runs]


@dataclass(frozen=True)
class TrialRun:
    """A sweep trial as MLflow holds it: what a resumed sweep and the pick of the best
    trial read (never Tune's pickled experiment state)."""

    trial_id: str
    run_id: str
    status: str
    config: dict[str, Any]  # the sampled values ({} for a trial of an older rayops)
    model_uri: str | None
    best: dict[str, float]  # the best epoch's metrics, without the best_ prefix

    @property
    def finished(self) -> bool:
        return self.status == "FINISHED" and self.model_uri is not None


def sweep_trials(tracking: TrackingConfig, experiment: str, parent_run_id: str) -> list[TrialRun]:
    """The sweep's trial runs."""
    runs = client(tracking).search_runs(
        [experiment_id(tracking, experiment)],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
    )
    return [
        TrialRun(
            run.data.tags[TRIAL_TAG],
            run.info.run_id,
            run.info.status,
            json.loads(run.data.tags.get(TRIAL_CONFIG_TAG, "{}")),
            run.data.tags.get(MODEL_URI_TAG),
            _best_metrics(run),
        )
        for run in runs
        if TRIAL_TAG in run.data.tags
    ]


def _best_metrics(run: Any) -> dict[str, float]:
    """The best epoch's metrics a run logged (``best_valid_f1`` -> ``valid_f1``)."""
    return {
        k.removeprefix("best_"): v for k, v in run.data.metrics.items() if k.startswith("best_")
    }


def trial_runs(tracking: TrackingConfig, experiment: str, parent_run_id: str) -> dict[str, str]:
    """``{trial_id: run_id}`` of the sweep's trial runs."""
    return {t.trial_id: t.run_id for t in sweep_trials(tracking, experiment, parent_run_id)}


def finished_with_model(tracking: TrackingConfig, run_id: str) -> dict[str, float] | None:
    """A FINISHED run's best metrics if it logged a model, else None."""
    run = client(tracking).get_run(run_id)
    if run.info.status != "FINISHED" or MODEL_URI_TAG not in run.data.tags:
        return None
    return _best_metrics(run)


def trial_models(
    tracking: TrackingConfig, experiment: str, parent_run_id: str
) -> dict[str, tuple[str, str]]:
    """``{trial_id: (run_id, model_uri)}`` for the sweep's trials that logged a model."""
    return {
        t.trial_id: (t.run_id, t.model_uri)
        for t in sweep_trials(tracking, experiment, parent_run_id)
        if t.model_uri
    }


def close_unfinished_children(
    tracking: TrackingConfig,
    experiment: str,
    parent_run_id: str,
    stopped_trials: set[str] | None = None,
) -> int:
    """Mark trial runs the scheduler stopped as KILLED: those still RUNNING, and those in
    ``stopped_trials`` (Tune ended them without error) that an interrupted fit left FAILED.
    Returns how many."""
    mlflow_client = client(tracking)
    children = mlflow_client.search_runs(
        [experiment_id(tracking, experiment)],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
    )
    runs = [
        r
        for r in children
        if r.info.status == "RUNNING"
        or (r.info.status == "FAILED" and r.data.tags.get(TRIAL_TAG) in (stopped_trials or set()))
    ]
    for run in runs:
        mlflow_client.set_tag(run.info.run_id, STOPPED_TAG, "early-stopped by the scheduler")
        mlflow_client.set_terminated(run.info.run_id, status="KILLED")
    return len(runs)


def set_tags(tracking: TrackingConfig, run_id: str, tags: Mapping[str, str]) -> None:
    mlflow_client = client(tracking)
    for key, value in tags.items():
        mlflow_client.set_tag(run_id, key, value)


def log_params(tracking: TrackingConfig, run_id: str, params: Mapping[str, Any]) -> None:
    """Params as text, one call each (a param, once logged, cannot change)."""
    mlflow_client = client(tracking)
    for key, value in params.items():
        mlflow_client.log_param(run_id, key, str(value))


def reopen_run(tracking: TrackingConfig, run_id: str) -> None:
    """Mark a run that is being continued (resumed) as running again."""
    client(tracking).update_run(run_id, status="RUNNING")


def run_tags(tracking: TrackingConfig, run_id: str) -> dict[str, str]:
    return dict(client(tracking).get_run(run_id).data.tags)


def metric_history(
    tracking: TrackingConfig, run_id: str, keys: Sequence[str]
) -> dict[str, list[tuple[int, float]]]:
    """Every logged (step, value) of each metric in ``keys``."""
    mlflow_client = client(tracking)
    return {
        key: [(m.step, m.value) for m in mlflow_client.get_metric_history(run_id, key)]
        for key in keys
    }


def log_figure(tracking: TrackingConfig, run_id: str, figure: Any, name: str) -> None:
    client(tracking).log_figure(run_id, figure, name)


def log_artifact(tracking: TrackingConfig, run_id: str, path: Path, folder: str) -> None:
    client(tracking).log_artifact(run_id, str(path), folder)
