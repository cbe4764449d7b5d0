"""MLflow: runs, nested trial runs, metrics, models and the registry with aliases.

The tracking client is made where it is used, from the config, never at import. Models are
logged as MLflow pyfunc models-from-code (``rayops/mlflow_model.py``) around a rayops bundle,
so ``mlflow.pyfunc.load_model`` works and loading never unpickles anything.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from rayops import __version__
from rayops.config import TrackingConfig
from rayops.errors import ModelFilesMissing, TrackingError, one_line, redact

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
TRIAL_TAG = "rayops.trial_id"
MODEL_URI_TAG = "rayops.model_uri"
_MODEL_CODE = Path(__file__).with_name("mlflow_model.py")


# Tags on a model version: the gate's verdict (set before @challenger moves to it), and why
# a version that passed was withdrawn later (refused in shadow or on served traffic, rolled
# back, its cycle abandoned). A replica canaries or shadows only a passed version that was
# not withdrawn.
PASSED_TAG = "rayops.gate.passed"
WITHDRAWN_TAG = "rayops.withdrawn"
DATASET_TAG = "rayops.dataset_version"


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    alias: str
    run_id: str
    source: str
    tags: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def gated(self) -> bool:
        """Passed the gate and not withdrawn since: fit to answer real traffic."""
        return self.tags.get(PASSED_TAG) == "true" and WITHDRAWN_TAG not in self.tags


def client(tracking: TrackingConfig) -> Any:
    """An MlflowClient for the configured store (the global URI is set too, for log_model)."""
    import mlflow
    from mlflow import MlflowClient

    if tracking.uri.startswith("sqlite:///"):
        Path(tracking.uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking.uri)
    return MlflowClient(tracking_uri=tracking.uri)


def experiment_id(tracking: TrackingConfig, name: str) -> str:
    """The id of experiment ``name``, created (with the configured artifact root) if missing."""
    mlflow_client = client(tracking)
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = tracking.artifact_location
    if location is not None and "://" not in location:
        Path(location).mkdir(parents=True, exist_ok=True)
        location = Path(location).as_uri()
    try:
        return mlflow_client.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it first
        found = mlflow_client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


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


def start_run(tracking: TrackingConfig, experiment: str, run_name: str,
              params: Mapping[str, Any] | None = None, parent_run_id: str | None = None,
              tags: Mapping[str, str] | None = None) -> str:
    """Create a run (nested under ``parent_run_id`` if given) and log its params."""
    from mlflow.entities import Param

    mlflow_client = client(tracking)
    all_tags = {"mlflow.runName": run_name, "rayops.version": __version__, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = mlflow_client.create_run(experiment_id(tracking, experiment), tags=all_tags,
                                   run_name=run_name)
    run_id = run.info.run_id
    flat = flatten(params or {})
    items = [Param(k, v) for k, v in flat.items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        mlflow_client.log_batch(run_id, params=items[start : start + 100])
    return run_id


def _numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_metrics(tracking: TrackingConfig, run_id: str, metrics: Mapping[str, float],
                step: int, attempts: int = 5) -> None:
    """Log numeric metrics at ``step``; retried because sqlite can be briefly locked."""
    log_history(tracking, run_id, {step: metrics}, attempts)


def log_history(tracking: TrackingConfig, run_id: str,
                history: Mapping[int, Mapping[str, float]], attempts: int = 5) -> None:
    """Log several steps' metrics in batches of at most 1000 values (MLflow's limit)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, v, now, step) for step, metrics in history.items()
             for k, v in _numeric(metrics).items()]
    for start in range(0, len(batch), 1000):
        for attempt in range(attempts):
            try:
                client(tracking).log_batch(run_id, metrics=batch[start:start + 1000])
                break
            except Exception:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))


def logged_steps(tracking: TrackingConfig, run_id: str, key: str = "epoch") -> list[int]:
    """The steps at which ``key`` was logged on the run, in logging order."""
    return [m.step for m in client(tracking).get_metric_history(run_id, key)]


def require_reachable(tracking: TrackingConfig, timeout_s: float = 5.0) -> None:
    """Fail fast, in one line, when an MLflow server does not answer (MLflow's own retries
    would take minutes). Local stores always answer."""
    if not tracking.uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(f"{tracking.uri.rstrip('/')}/health", timeout=timeout_s
                     ).raise_for_status()
    except requests.RequestException as exc:
        raise TrackingError(f"MLflow at {redact(tracking.uri)} does not answer: "
                            f"{one_line(exc)}"
                            ) from None


def metric_name(text: str) -> str:
    """A string MLflow accepts as a metric key (letters, digits, _ - . / and spaces)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", text)[:250]


def log_dict(tracking: TrackingConfig, run_id: str, value: Mapping[str, Any],
             artifact_file: str) -> None:
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

    return ModelSignature(inputs=Schema(
        [ColSpec(AnyType(), name, required=required) for name, required in columns.items()]
    ))


def log_model(tracking: TrackingConfig, run_id: str, bundle_dir: Path,
              input_example: pd.DataFrame, required: Mapping[str, bool],
              requirements: Sequence[str] = ()) -> str:
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
            pip_requirements=[f"rayops=={__version__}", f"torch=={torch_version}",
                              *requirements],
        )
    client(tracking).set_tag(run_id, MODEL_URI_TAG, info.model_uri)
    return info.model_uri


def logged_model_uri(tracking: TrackingConfig, run_id: str) -> str | None:
    """The model a run already logged (a resumed run does not log it twice)."""
    return client(tracking).get_run(run_id).data.tags.get(MODEL_URI_TAG)


def register(tracking: TrackingConfig, name: str, model_uri: str, run_id: str,
             dataset_version: str | None = None, alias: str | None = None
             ) -> RegisteredModel:
    """Register ``model_uri`` as a new version of ``name`` (no alias: the gate points
    ``challenger`` at it only if it passes; ``alias`` for a person's explicit choice)."""
    import mlflow

    tags = {"rayops.run_id": run_id, **({DATASET_TAG: dataset_version} if dataset_version
                                        else {})}
    client(tracking)
    with contextlib.redirect_stderr(io.StringIO()) as said:  # MLflow prints, not logs
        version = mlflow.register_model(model_uri, name, tags=tags)
    logger.debug("%s", said.getvalue().strip())
    if alias is not None:
        set_alias(tracking, name, alias, str(version.version))
    return RegisteredModel(name, str(version.version), alias or "", run_id, model_uri, tags)


def _versions(tracking: TrackingConfig, name: str, run_id: str | None = None) -> list[Any]:
    """The registered versions of ``name`` (of one run's model when ``run_id``); none when
    the model does not exist, TrackingError when the registry cannot be asked."""
    query = f"name = '{name}'" + (f" and run_id = '{run_id}'" if run_id else "")
    try:
        return list(client(tracking).search_model_versions(query))
    except Exception as exc:
        if _not_found(exc):
            return []
        raise TrackingError(f"cannot list the versions of {name!r} in "
                            f"{redact(tracking.uri)}: {one_line(exc)}") from None


def registered_version_of_run(tracking: TrackingConfig, name: str, run_id: str
                              ) -> RegisteredModel | None:
    """The version of ``name`` a run's model was registered as, if it was (a resumed
    caller gates that one instead of registering the model twice)."""
    found = _versions(tracking, name, run_id)
    if not found:
        return None
    first = min(found, key=lambda v: int(v.version))
    return RegisteredModel(name, str(first.version), "", run_id, first.source,
                           dict(first.tags or {}))


def trained_datasets(tracking: TrackingConfig, name: str) -> dict[str, str | None]:
    """``{model version: the dataset version it trained on}`` for every registered version
    of ``name`` (None where neither the version nor its run says): the dataset versions
    that must stay readable while those models are registered."""
    mlflow_client = client(tracking)
    found: dict[str, str | None] = {}
    for version in _versions(tracking, name):
        dataset = (version.tags or {}).get(DATASET_TAG)
        if dataset is None and version.run_id:  # registered before versions were tagged
            with contextlib.suppress(Exception):
                dataset = mlflow_client.get_run(version.run_id).data.tags.get(DATASET_TAG)
        found[str(version.version)] = dataset
    return found


def withdraw(tracking: TrackingConfig, name: str, version: str, why: str) -> bool:
    """Take a version that passed the gate off live traffic: tag why, and remove
    ``challenger`` if it names the version (replicas stop its canary and shadow). True
    when the alias was removed."""
    tag_version(tracking, name, version, {WITHDRAWN_TAG: why[:500]})
    current = alias_or_none(tracking, name, CHALLENGER)
    if current is None or current.version != version:
        return False
    client(tracking).delete_registered_model_alias(name, CHALLENGER)
    logger.info("%s@%s removed: v%s %s", name, CHALLENGER, version, why)
    return True


PREVIOUS_TAG = "rayops.previous_champion"


def promote(tracking: TrackingConfig, name: str, version: str, alias: str = CHAMPION
            ) -> RegisteredModel | None:
    """Point ``alias`` at ``version``, remembering the version it left (for rollback).
    Returns the version the alias pointed to before, if any."""
    previous = alias_or_none(tracking, name, alias)
    try:
        client(tracking).get_model_version(name, version)
    except Exception:
        raise TrackingError(f"model {name!r} has no version {version!r}") from None
    if previous is not None and previous.version != version:
        tag_version(tracking, name, version, {f"{PREVIOUS_TAG}.{alias}": previous.version})
    set_alias(tracking, name, alias, version)
    return previous


def rollback(tracking: TrackingConfig, name: str, alias: str = CHAMPION,
             why: str = "rolled back") -> str:
    """Move ``alias`` back to the version it pointed to before the current one; the version
    it leaves is withdrawn (no canary or shadow serves it again)."""
    current = resolve_alias(tracking, name, alias)
    previous = current.tags.get(f"{PREVIOUS_TAG}.{alias}")
    if not previous:
        raise TrackingError(f"{name}@{alias} (version {current.version}) has no previous "
                            "version to roll back to")
    set_alias(tracking, name, alias, previous)
    withdraw(tracking, name, current.version, f"{why} (@{alias} back to v{previous})")
    return previous


def set_alias(tracking: TrackingConfig, name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version``: serving replicas following the alias switch over."""
    client(tracking).set_registered_model_alias(name, alias, version)
    logger.debug("%s@%s -> version %s", name, alias, version)


def tag_version(tracking: TrackingConfig, name: str, version: str,
                tags: Mapping[str, str]) -> None:
    mlflow_client = client(tracking)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, version, key, value)


def alias_or_none(tracking: TrackingConfig, name: str, alias: str) -> RegisteredModel | None:
    """The version ``alias`` points to, or None when the model or the alias does not exist.
    Any other failure (the server down, a timeout) raises: "cannot tell" is not "none"."""
    try:
        return resolve_alias(tracking, name, alias)
    except AliasNotFound:
        return None


def _not_found(exc: Exception) -> bool:
    """MLflow's way of saying a model, version, alias or artifact does not exist."""
    code = getattr(exc, "error_code", None)
    if code == "RESOURCE_DOES_NOT_EXIST":
        return True
    return code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc)


class AliasNotFound(TrackingError):
    """The registered model or the alias does not exist."""


def resolve_alias(tracking: TrackingConfig, name: str, alias: str) -> RegisteredModel:
    """The model version ``alias`` points to; AliasNotFound if there is none, TrackingError
    if the registry cannot be asked."""
    try:
        version = client(tracking).get_model_version_by_alias(name, alias)
    except Exception as exc:
        if _not_found(exc):
            raise AliasNotFound(f"no model version of {name!r} has the alias {alias!r} in "
                                f"{redact(tracking.uri)}") from None
        raise TrackingError(f"cannot read {name}@{alias} from the registry at "
                            f"{redact(tracking.uri)}: "
                            f"{one_line(exc)}") from None
    return RegisteredModel(name, str(version.version), alias, version.run_id or "",
                           version.source, dict(version.tags or {}))


def download_bundle(tracking: TrackingConfig, model: RegisteredModel, dest: Path) -> Path:
    """Download the registered version's rayops bundle folder into ``dest``; returns the
    bundle's path. ModelFilesMissing when its files are gone, TrackingError when the store
    cannot be read."""
    import mlflow

    client(tracking)
    try:
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{model.name}/{model.version}", dst_path=str(dest)))
    except Exception as exc:
        if _not_found(exc) or isinstance(exc, FileNotFoundError):
            raise ModelFilesMissing(f"the files of {model.name} v{model.version} are gone: "
                                    f"{one_line(exc)}") from None
        raise TrackingError(f"cannot download {model.name} v{model.version} from "
                            f"{redact(tracking.uri)}: {one_line(exc)}") from None
    found = sorted(local.rglob("bundle.json"))
    if not found:
        raise ModelFilesMissing(f"model {model.name} v{model.version} holds no rayops bundle")
    return found[0].parent


def runs_tagged(tracking: TrackingConfig, experiment: str, tags: Mapping[str, str]
                ) -> list[str]:
    """Ids of the experiment's runs that carry every one of ``tags``."""
    clauses = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client(tracking).search_runs([experiment_id(tracking, experiment)], clauses)
    return [r.info.run_id for r in runs]


TRIAL_CONFIG_TAG = "rayops.trial_config"  # the values a trial sampled, JSON


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


def sweep_trials(tracking: TrackingConfig, experiment: str, parent_run_id: str
                 ) -> list[TrialRun]:
    """The sweep's trial runs."""
    runs = client(tracking).search_runs(
        [experiment_id(tracking, experiment)],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
    )
    return [TrialRun(run.data.tags[TRIAL_TAG], run.info.run_id, run.info.status,
                     json.loads(run.data.tags.get(TRIAL_CONFIG_TAG, "{}")),
                     run.data.tags.get(MODEL_URI_TAG), _best_metrics(run))
            for run in runs if TRIAL_TAG in run.data.tags]


def _best_metrics(run: Any) -> dict[str, float]:
    """The best epoch's metrics a run logged (``best_valid_f1`` -> ``valid_f1``)."""
    return {k.removeprefix("best_"): v for k, v in run.data.metrics.items()
            if k.startswith("best_")}


def trial_runs(tracking: TrackingConfig, experiment: str, parent_run_id: str) -> dict[str, str]:
    """``{trial_id: run_id}`` of the sweep's trial runs."""
    return {t.trial_id: t.run_id for t in sweep_trials(tracking, experiment, parent_run_id)}


def finished_with_model(tracking: TrackingConfig, run_id: str) -> dict[str, float] | None:
    """A FINISHED run's best metrics if it logged a model, else None."""
    run = client(tracking).get_run(run_id)
    if run.info.status != "FINISHED" or MODEL_URI_TAG not in run.data.tags:
        return None
    return _best_metrics(run)


def trial_models(tracking: TrackingConfig, experiment: str,
                 parent_run_id: str) -> dict[str, tuple[str, str]]:
    """``{trial_id: (run_id, model_uri)}`` for the sweep's trials that logged a model."""
    return {t.trial_id: (t.run_id, t.model_uri)
            for t in sweep_trials(tracking, experiment, parent_run_id) if t.model_uri}


def close_unfinished_children(tracking: TrackingConfig, experiment: str,
                              parent_run_id: str, stopped_trials: set[str] | None = None) -> int:
    """Mark trial runs the scheduler stopped as KILLED: those still RUNNING, and those in
    ``stopped_trials`` (Tune ended them without error) that an interrupted fit left FAILED.
    Returns how many."""
    mlflow_client = client(tracking)
    children = mlflow_client.search_runs(
        [experiment_id(tracking, experiment)],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
    )
    runs = [r for r in children if r.info.status == "RUNNING" or (
        r.info.status == "FAILED" and r.data.tags.get(TRIAL_TAG) in (stopped_trials or set()))]
    for run in runs:
        mlflow_client.set_tag(run.info.run_id, "rayops.stopped", "early-stopped by the scheduler")
        mlflow_client.set_terminated(run.info.run_id, status="KILLED")
    return len(runs)
