"""A run of one worker, trained in one process: no Ray Train controller, worker group or
placement group of its own.

A sweep's trial that needs one worker runs its loop this way, in the trial's own process,
which Tune gave the worker's CPUs (and GPU); a plain run of one worker, in one Ray task
that holds them (:func:`rayops.train.driver.fit_and_log`). On small data, starting a worker
group and its bookkeeping was most of a trial (``tests/benchmarks/bench_tune.py``) and of
a short run (``bench_train.py``). What Ray Train does
for a run, this does the same way, so a trial stops, resumes and is read back like any run:

- each checkpoint goes to the run's folder in storage, named as Ray Train names them
  (``checkpoint_<time>``), where :func:`rayops.models.checkpoints.latest_state` finds it;
- the best ``train.checkpoints_to_keep`` by the target metric are kept, and the newest;
- a loop that fails starts again from the newest checkpoint, up to ``train.max_failures``
  times (-1: always), and a run whose driver died continues from what storage holds;
- every report also goes to ``on_report`` (Tune's, so ASHA sees each epoch).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ray.train import Checkpoint

from rayops.config import PipelineConfig
from rayops.errors import TrainingError, one_line
from rayops.families import family_named
from rayops.models import session
from rayops.models.checkpoints import checkpoints_of, stored_checkpoints
from rayops.models.metrics_writer import ENVIRONMENT
from rayops.runtime import environment_kept
from rayops.storage import Location

logger = logging.getLogger(__name__)

Report = Callable[[dict[str, Any]], None]


def _ignore(metrics: dict[str, Any]) -> None:
    """Where a plain run's reports go beside storage: nowhere."""


@dataclass
class Result:
    """What :func:`rayops.train.driver.fit_and_log` reads of a run (as of Ray Train's)."""

    best_checkpoints: list[tuple[Checkpoint, dict[str, Any]]]
    checkpoint: Checkpoint | None  # the newest
    error: Exception | None = None


@dataclass
class StoredReports:
    """The loop's :class:`rayops.models.session.Session`: checkpoints into ``run``."""

    run: Location
    keep: int
    metric: str
    mode: str
    on_report: Report
    use_gpu: bool = False
    kept: list[tuple[Checkpoint, dict[str, Any]]] = field(default_factory=list)
    newest: Checkpoint | None = None

    def report(self, metrics: dict[str, Any], checkpoint: Checkpoint | None) -> None:
        if checkpoint is not None:
            folder = self.run.join(f"checkpoint_{datetime.now():%Y-%m-%d_%H-%M-%S.%f}")
            with checkpoint.as_directory() as written:
                folder.upload_dir(Path(written))
            self.newest = Checkpoint(folder.path, filesystem=folder.fs)
            self.kept.append((self.newest, dict(metrics)))
            self._prune()
        self.on_report(metrics)

    def latest_checkpoint(self) -> Checkpoint | None:
        return self.newest

    def _prune(self) -> None:
        """Delete the checkpoints beyond the best ``keep`` (never the newest)."""
        sign = 1 if self.mode == "max" else -1
        scored = [cm for cm in self.kept if self.metric in cm[1]]
        ranked = sorted(scored, key=lambda cm: sign * cm[1][self.metric])  # worst first
        drop = {id(c) for c, _ in ranked[: max(len(ranked) - self.keep, 0)]} - {id(self.newest)}
        for checkpoint, _ in [cm for cm in self.kept if id(cm[0]) in drop]:
            self.run.child(checkpoint.path).delete_dir()
        self.kept = [cm for cm in self.kept if id(cm[0]) not in drop]

    def result(self) -> Result:
        best = [(c, m) for c, m in self.kept if self.metric in m]
        return Result(best, self.newest)


def _reports(cfg: PipelineConfig, run_name: str, on_report: Report) -> StoredReports:
    """The run's reports, with the checkpoints an earlier attempt left in storage (and
    their metrics, from the newest one's history)."""
    metric, mode = cfg.target_metric
    run = checkpoints_of(cfg, run_name)
    reports = StoredReports(
        run, cfg.train.checkpoints_to_keep, metric, mode, on_report, cfg.train.use_gpu
    )
    stored = stored_checkpoints(run) if run.exists() else []
    if stored:
        reports.newest = Checkpoint(stored[0][1].path, filesystem=run.fs)
        history = family_named(cfg.model.family).history(cfg, run_name, reports.newest)
        by_epoch = {int(h["epoch"]): h for h in history}
        reports.kept = [
            (Checkpoint(place.path, filesystem=run.fs), dict(by_epoch[epoch]))
            for epoch, place in reversed(stored)
            if epoch in by_epoch
        ]
    return reports


def fit_in_process(
    cfg: PipelineConfig, loop: dict[str, Any], run_name: str, on_report: Report | None
) -> Result:
    """Run the family's loop here, as the run's only worker (``loop``: its
    ``train_loop_config``; ``on_report``: where each report goes beside storage)."""
    if cfg.train.num_workers != 1:
        raise TrainingError(
            f"train.num_workers is {cfg.train.num_workers}: only a run of one worker "
            "trains in its own process"
        )
    _, loop_per_worker = family_named(cfg.model.family).trainer()
    reports = _reports(cfg, run_name, on_report or _ignore)
    retries = cfg.train.max_failures
    for attempt in itertools.count(1):
        try:
            # The loop's metrics writer turns MLflow's retries off for its process: this
            # one goes on to log the model (a trial), so it gets them back.
            with session.running(reports), environment_kept(ENVIRONMENT):
                loop_per_worker(loop)
            return reports.result()
        except Exception as exc:
            if 0 <= retries < attempt:
                raise TrainingError(
                    f"training failed after {attempt} attempt(s): {one_line(exc)}"
                ) from exc
            logger.warning(
                "%s: attempt %d failed (%s); continuing from its newest checkpoint",
                run_name,
                attempt,
                one_line(exc),
            )
    raise AssertionError("unreachable")  # pragma: no cover
