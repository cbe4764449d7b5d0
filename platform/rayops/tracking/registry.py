"""The model registry: versions, the gate's tags on them, and the aliases (``champion``,
``challenger``) that serving follows; promote, roll back, withdraw."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayops.config import TrackingConfig
from rayops.errors import ModelFilesMissing, TrackingError, one_line, redact
from rayops.tracking.client import client, not_found
from rayops.tracking.tags import (
    CHALLENGER,
    CHAMPION,
    DATASET_TAG,
    PASSED_TAG,
    PREVIOUS_TAG,
    RUN_ID_TAG,
    WITHDRAWN_TAG,
)

logger = logging.getLogger(__name__)


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


def register(
    tracking: TrackingConfig,
    name: str,
    model_uri: str,
    run_id: str,
    dataset_version: str | None = None,
    alias: str | None = None,
) -> RegisteredModel:
    """Register ``model_uri`` as a new version of ``name`` (no alias: the gate points
    ``challenger`` at it only if it passes; ``alias`` for a person's explicit choice)."""
    import mlflow

    tags = {RUN_ID_TAG: run_id, **({DATASET_TAG: dataset_version} if dataset_version else {})}
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
        if not_found(exc):
            return []
        raise TrackingError(
            f"cannot list the versions of {name!r} in {redact(tracking.uri)}: {one_line(exc)}"
        ) from None


def registered_version_of_run(
    tracking: TrackingConfig, name: str, run_id: str
) -> RegisteredModel | None:
    """The version of ``name`` a run's model was registered as, if it was (a resumed
    caller gates that one instead of registering the model twice)."""
    found = _versions(tracking, name, run_id)
    if not found:
        return None
    first = min(found, key=lambda v: int(v.version))
    return RegisteredModel(
        name, str(first.version), "", run_id, first.source, dict(first.tags or {})
    )


def registered_version(
    tracking: TrackingConfig, name: str, version: str | None = None
) -> RegisteredModel:
    """Version ``version`` of ``name`` (the newest when None); AliasNotFound when there is
    none, TrackingError when the registry cannot be asked."""
    found = _versions(tracking, name)
    if version is not None:
        found = [v for v in found if str(v.version) == str(version)]
    if not found:
        which = "no version" if version is None else f"no version {version}"
        raise AliasNotFound(
            f"{which} of the model {name!r} is registered in {redact(tracking.uri)}"
        )
    chosen = max(found, key=lambda v: int(v.version))
    return RegisteredModel(
        name, str(chosen.version), "", chosen.run_id or "", chosen.source, dict(chosen.tags or {})
    )


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


def promote(
    tracking: TrackingConfig, name: str, version: str, alias: str = CHAMPION
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


def rollback(
    tracking: TrackingConfig, name: str, alias: str = CHAMPION, why: str = "rolled back"
) -> str:
    """Move ``alias`` back to the version it pointed to before the current one; the version
    it leaves is withdrawn (no canary or shadow serves it again)."""
    current = resolve_alias(tracking, name, alias)
    previous = current.tags.get(f"{PREVIOUS_TAG}.{alias}")
    if not previous:
        raise TrackingError(
            f"{name}@{alias} (version {current.version}) has no previous version to roll back to"
        )
    set_alias(tracking, name, alias, previous)
    withdraw(tracking, name, current.version, f"{why} (@{alias} back to v{previous})")
    return previous


def set_alias(tracking: TrackingConfig, name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version``: serving replicas following the alias switch over."""
    client(tracking).set_registered_model_alias(name, alias, version)
    logger.debug("%s@%s -> version %s", name, alias, version)


def tag_version(tracking: TrackingConfig, name: str, version: str, tags: Mapping[str, str]) -> None:
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


class AliasNotFound(TrackingError):
    """The registered model or the alias does not exist."""


def resolve_alias(tracking: TrackingConfig, name: str, alias: str) -> RegisteredModel:
    """The model version ``alias`` points to; AliasNotFound if there is none, TrackingError
    if the registry cannot be asked."""
    try:
        version = client(tracking).get_model_version_by_alias(name, alias)
    except Exception as exc:
        if not_found(exc):
            raise AliasNotFound(
                f"no model version of {name!r} has the alias {alias!r} in {redact(tracking.uri)}"
            ) from None
        raise TrackingError(
            f"cannot read {name}@{alias} from the registry at "
            f"{redact(tracking.uri)}: "
            f"{one_line(exc)}"
        ) from None
    return RegisteredModel(
        name,
        str(version.version),
        alias,
        version.run_id or "",
        version.source,
        dict(version.tags or {}),
    )


def download_bundle(tracking: TrackingConfig, model: RegisteredModel, dest: Path) -> Path:
    """Download the registered version's rayops bundle folder into ``dest``; returns the
    bundle's path. ModelFilesMissing when its files are gone, TrackingError when the store
    cannot be read."""
    import mlflow

    client(tracking)
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{model.name}/{model.version}", dst_path=str(dest)
            )
        )
    except Exception as exc:
        if not_found(exc) or isinstance(exc, FileNotFoundError):
            raise ModelFilesMissing(
                f"the files of {model.name} v{model.version} are gone: {one_line(exc)}"
            ) from None
        raise TrackingError(
            f"cannot download {model.name} v{model.version} from "
            f"{redact(tracking.uri)}: {one_line(exc)}"
        ) from None
    found = sorted(local.rglob("bundle.json"))
    if not found:
        raise ModelFilesMissing(f"model {model.name} v{model.version} holds no rayops bundle")
    return found[0].parent
