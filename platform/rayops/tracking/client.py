"""The MLflow client, made where it is used from the config (never at import), and the
checks every caller shares: is the server there, does a thing exist."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rayops.config import TrackingConfig
from rayops.errors import TrackingError, one_line, redact

logger = logging.getLogger(__name__)


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


def require_reachable(tracking: TrackingConfig, timeout_s: float = 5.0) -> None:
    """Fail fast, in one line, when an MLflow server does not answer (MLflow's own retries
    would take minutes). Local stores always answer."""
    if not tracking.uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(f"{tracking.uri.rstrip('/')}/health", timeout=timeout_s).raise_for_status()
    except requests.RequestException as exc:
        raise TrackingError(
            f"MLflow at {redact(tracking.uri)} does not answer: {one_line(exc)}"
        ) from None


def not_found(exc: Exception) -> bool:
    """MLflow's way of saying a model, version, alias or artifact does not exist."""
    code = getattr(exc, "error_code", None)
    if code == "RESOURCE_DOES_NOT_EXIST":
        return True
    return code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc)


def where_to_look(tracking: TrackingConfig) -> str:
    """How a user opens what a command logged: the server's address, or the command that
    starts MLflow's UI on a local store (only 127.0.0.1)."""
    if tracking.uri.startswith(("http://", "https://")):
        return f"MLflow:   {tracking.uri}"
    return f"MLflow:   mlflow ui --backend-store-uri {tracking.uri}  (then http://127.0.0.1:5000)"
