"""Where a training run's checkpoints live and what they hold.

Ray Train keeps a run's checkpoints under ``{storage.root}/checkpoints/{run name}`` (local or
S3). Rank 0 of the PyTorch loop writes each one (:func:`checkpoint_of`: weights, optimizer,
scheduler, :class:`Progress`, RNG and preprocessing state, then ``progress.json`` last);
:func:`latest_state` finds the newest one in storage, also one whose registration died with
its driver, and :func:`restore` continues from it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from ray.train import Checkpoint

from rayops.config import PipelineConfig
from rayops.errors import RayopsError
from rayops.models import session
from rayops.models.mlp import load_state_dict
from rayops.models.sharding import gathered_optimizer_state, own_optimizer_state, sharded_tables
from rayops.storage import Location, root_of

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
PROGRESS_FILE = "progress.json"


@dataclass
class Progress:
    """What resuming needs besides weights: where we are, how early stopping stands, and
    every epoch's metrics so far (the record MLflow is completed from)."""

    epoch: int = 0
    best: float | None = None
    stale_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def update(self, results: dict[str, float], metric: str, mode: str) -> None:
        value = results[metric]
        better = self.best is None or (value > self.best if mode == "max" else value < self.best)
        self.best, self.stale_epochs = (value, 0) if better else (self.best, self.stale_epochs + 1)
        self.epoch = int(results["epoch"])
        self.history.append(dict(results))

    def stopped_early(self, patience: int | None) -> bool:
        return patience is not None and self.stale_epochs >= patience


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


def checkpoints_of(cfg: PipelineConfig, run_name: str | None = None) -> Location:
    """Where Ray Train keeps runs' checkpoints (``{root}/checkpoints/{run}``)."""
    location = root_of(cfg.storage).join("checkpoints")
    return location.join(run_name) if run_name else location


# Ray Train's record of a run's checkpoints, rewritten after each one (Train V2's name).
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"


def set_aside_broken_snapshot(run: Location) -> bool:
    """A driver killed while Ray Train rewrote its snapshot leaves it empty or cut short,
    and Ray Train then refuses to start the run. Move such a file aside (the run resumes
    from the newest checkpoint in storage, see :func:`latest_state`); True when it did."""
    snapshot = run.join(SNAPSHOT_FILE)
    if not snapshot.exists():
        return False
    try:
        json.loads(snapshot.read_bytes())
        return False
    except ValueError:
        aside = run.join(f"{SNAPSHOT_FILE}.broken-{int(time.time())}")
        with run.io("set aside the broken snapshot in"):
            run.fs.move(snapshot.path, aside.path)
        logger.warning(
            "Ray Train's snapshot %s was cut short (its driver died while writing "
            "it); set aside as %s, resuming from the newest stored checkpoint",
            snapshot.uri,
            aside.uri,
        )
        return True


def stored_checkpoints(run: Location) -> list[tuple[int, Location]]:
    """(epoch, folder) of every checkpoint rank 0 wrote for the run, newest first, whether
    or not Ray Train registered it."""
    found = []
    for name in run.list_dir():
        if not name.startswith("checkpoint_"):
            continue
        folder = run.join(name)
        try:
            found.append((int(folder.join(PROGRESS_FILE).read_json()["epoch"]), folder))
        except (RayopsError, ValueError, KeyError):  # partly written: not a checkpoint yet
            continue
    return sorted(found, key=lambda item: -item[0])


def latest_state(run: Location | None, registered: Checkpoint | None) -> dict[str, Any] | None:
    """The newest checkpoint's state: the one Ray Train registered, or a newer one in
    storage whose registration died with the driver. Training resumes after it, so an epoch
    whose metrics may already be in MLflow is never trained (and logged) twice."""
    state = None
    if registered is not None:
        with registered.as_directory() as folder:
            state = load_state_dict(Path(folder) / CHECKPOINT_FILE)
    for epoch, place in stored_checkpoints(run) if run is not None else []:
        if state is not None and epoch <= int(state["epoch"]):
            break
        stored = place.join(CHECKPOINT_FILE)
        try:
            return load_state_dict(stored.read_bytes(), stored.uri)
        except RayopsError:  # an upload cut short: an older checkpoint will do
            continue
    return state


def restore(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, run: Location | None
) -> Progress:
    """Resume from the newest checkpoint (after a failure or a driver restart)."""
    state = latest_state(run, session.latest_checkpoint())
    if state is None:
        return Progress()
    _unwrap(model).load_state_dict(state["model"])  # a sharded table keeps its rows
    optimizer.load_state_dict(own_optimizer_state(_unwrap(model), optimizer, state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    logger.warning("Resumed from the checkpoint of epoch %d", state["epoch"])
    return Progress(
        int(state["epoch"]),
        state["best"],
        int(state["stale_epochs"]),
        json.loads(state.get("history", "[]")),
    )


def history_of(state: dict[str, Any] | None) -> list[dict[str, float]]:
    """Every epoch's metrics up to a checkpoint's state, oldest first."""
    return json.loads(state.get("history", "[]")) if state else []


@contextlib.contextmanager
def checkpoint_of(
    rank: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    progress: Progress,
    meta: dict[str, Any],
) -> Iterator[Checkpoint | None]:
    """Rank 0 writes the checkpoint (weights, optimizer, scheduler, progress, RNG and the
    preprocessing state); other ranks report metrics only. Every rank calls it: sharded
    tables' optimizer moments are gathered whole (their weights were, by validation)."""
    sharded = any(True for _ in sharded_tables(_unwrap(model)))
    moments = gathered_optimizer_state(_unwrap(model), optimizer) if sharded else None
    if rank != 0:
        yield None
        return
    with tempfile.TemporaryDirectory() as folder:
        state = {
            "model": _unwrap(model).state_dict(),
            "optimizer": moments or optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": progress.epoch,
            "best": progress.best,
            "stale_epochs": progress.stale_epochs,
            "history": json.dumps(progress.history),
            "rng": torch.get_rng_state(),
            "meta": json.dumps(meta),
        }
        torch.save(state, Path(folder) / CHECKPOINT_FILE)
        # Written last, read first: finding the newest checkpoint reads only this.
        (Path(folder) / PROGRESS_FILE).write_text(json.dumps({"epoch": progress.epoch}))
        yield Checkpoint.from_directory(folder)
