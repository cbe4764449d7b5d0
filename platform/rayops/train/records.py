"""Run records: what ``--resume`` needs to continue a training run or a sweep.

Each run leaves a small JSON record under ``{storage.root}/runs/{pipeline}/{kind}/`` naming
its Ray Train or Tune run, its MLflow run and its dataset version, with a status:
``running`` (its driver may have died), ``failed`` (it stopped on an error: an outage, a
failed ``log_model``, a worker beyond ``max_failures``) or ``finished``. The newest record
that did not finish is what ``--resume`` continues, whatever stopped it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Literal

from rayops import tracking
from rayops.config import PipelineConfig
from rayops.data.versions import DatasetVersion, load_version, version_number
from rayops.errors import TrainingError
from rayops.storage import Location, root_of

logger = logging.getLogger(__name__)


def runs_folder(cfg: PipelineConfig, kind: str) -> Location:
    return root_of(cfg.storage).join("runs", cfg.name, kind)


Status = Literal["running", "failed", "finished"]


@dataclass(frozen=True)
class RunRecord:
    """One run's record (a training run or a sweep), as stored in its JSON file."""

    name: str  # the Ray Train / Tune run's name: its checkpoints' folder
    run_id: str  # the MLflow run (a sweep's parent run)
    dataset_version: str  # a DatasetVersion.id
    status: Status = "running"
    started_at: str = dataclasses.field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class BadRecord(TrainingError):
    """A run record that cannot be read: nothing is resumed from it."""


_REQUIRED = ("name", "run_id", "dataset_version")


def read_record(location: Location) -> RunRecord:
    """The record stored at ``location``; BadRecord naming the file and what is wrong with
    it (not JSON, a missing key, an unknown status) rather than guessing what it meant."""
    try:
        data = location.read_json()
    except ValueError as exc:
        raise BadRecord(f"run record {location.uri} is not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise BadRecord(
            f"run record {location.uri} is not a JSON object (got {type(data).__name__})"
        )
    missing = [key for key in _REQUIRED if not isinstance(data.get(key), str)]
    if missing:
        raise BadRecord(
            f"run record {location.uri} lacks {', '.join(missing)} "
            f"(has: {', '.join(sorted(data)) or 'nothing'})"
        )
    status = data.get("status", "running")
    if status not in ("running", "failed", "finished"):
        raise BadRecord(
            f"run record {location.uri}: status {status!r} is not one of running, failed, finished"
        )
    return RunRecord.from_dict(data)


def new_record(name: str, run_id: str, version: DatasetVersion) -> RunRecord:
    return RunRecord(name, run_id, version.id)


def write_record(folder: Location, record: RunRecord, status: Status | None = None) -> RunRecord:
    """Store ``record`` (with ``status`` when given) as ``{name}.json``; returns it."""
    updated = dataclasses.replace(record, status=status or record.status)
    folder.join(f"{record.name}.json").write_json(dataclasses.asdict(updated))
    return updated


class NothingToResume(TrainingError):
    """No run of this kind stopped unfinished."""


def resumable(
    cfg: PipelineConfig, kind: str, name: str | None = None
) -> tuple[RunRecord, DatasetVersion]:
    """The run record ``name`` (a caller that named its run, like the operate loop: it
    continues its own run, never another), or else the newest ``kind`` record if it did
    not finish; its dataset version; its MLflow run marked RUNNING again when it did not
    finish. NothingToResume when there is no such record (or, unnamed, it finished)."""
    folder = runs_folder(cfg, kind)
    if name is not None:
        location = folder.join(f"{name}.json")
        if not location.exists():
            raise NothingToResume(f"nothing to resume: no {kind} run {name!r} under {folder.uri}")
        record = read_record(location)
    else:
        records = [read_record(folder.join(n)) for n in folder.list_dir() if n.endswith(".json")]
        if not records:
            raise NothingToResume(
                f"nothing to resume: no {kind} run of {cfg.name!r} under {folder.uri}"
            )
        record = max(records, key=lambda r: r.started_at)
        if record.finished:
            raise NothingToResume(
                f"nothing to resume: the last {kind} run of {cfg.name!r} ({record.name}) finished"
            )
    version = load_version(cfg, version_number(record.dataset_version))
    if not record.finished:
        tracking.reopen_run(cfg.tracking, record.run_id)
        logger.info(
            "Resuming %s (MLflow run %s, %s) on %s",
            record.name,
            record.run_id,
            record.status,
            version.id,
        )
    return record, version


def mark_failed(cfg: PipelineConfig, folder: Location, record: RunRecord) -> None:
    """Record a run that stopped on an error as resumable; mark its MLflow run FAILED when
    MLflow answers (it may be the very thing that is down)."""
    write_record(folder, record, status="failed")
    try:
        tracking.require_reachable(cfg.tracking)  # fast: MLflow's retries take minutes
        tracking.end_run(cfg.tracking, record.run_id, status="FAILED")
    except Exception as exc:
        logger.warning("MLflow run %s not marked FAILED: %s", record.run_id, exc)
