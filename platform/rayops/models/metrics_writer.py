"""Epoch metrics to MLflow from a background thread: the training loop never waits on the
tracking server.

Rank 0 hands each epoch's metrics to a bounded queue and goes on training; a thread sends
them with retries and backoff. Metrics it cannot send (MLflow down, the queue full) are
not lost: every checkpoint carries the whole epoch history, and the driver logs whatever
MLflow lacks once training ends (or at ``--resume`` when MLflow was still down then).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Mapping

from rayops import tracking
from rayops.config import TrackingConfig

logger = logging.getLogger(__name__)

_STOP = None
# What a writer sets in its process's environment (see MetricsWriter.__init__).
ENVIRONMENT = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")


class MetricsWriter:
    """A bounded queue of ``(step, metrics)`` and the thread that drains it."""

    def __init__(
        self,
        tracking_cfg: TrackingConfig,
        run_id: str,
        maxsize: int = 1024,
        attempts: int = 5,
        backoff_s: float = 0.25,
    ) -> None:
        # This process only trains: MLflow's own HTTP retries (minutes against a server
        # that is down) would hold the thread, so the retries here are the only ones.
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.tracking, self.run_id = tracking_cfg, run_id
        self.attempts, self.backoff_s = attempts, backoff_s
        # Import MLflow and build its client now, before the loop's clock starts: done by
        # the thread, the import (seconds of CPU) would slow the first epochs of a worker
        # that has one CPU. Building a client sends nothing to the server.
        tracking.client(tracking_cfg)
        self.unsent: list[int] = []
        # Set by close(): the thread sends nothing more. A run of one worker trains in a Ray
        # task whose process outlives it; a thread still retrying there would log an epoch
        # after the driver has logged it from the checkpoint history (twice in MLflow).
        self._closed = threading.Event()
        self._queue: queue.Queue[tuple[int, dict[str, float], int] | None] = queue.Queue(maxsize)
        self._thread = threading.Thread(target=self._drain, name="rayops-metrics", daemon=True)
        self._thread.start()

    def put(self, step: int, metrics: Mapping[str, float]) -> None:
        """Queue one epoch's metrics; never blocks."""
        try:
            # One timestamp for every send of this step: a retry after an answer that was
            # lost (the server stopping mid-request) is then stored once, not twice.
            self._queue.put_nowait((step, dict(metrics), int(time.time() * 1000)))
        except queue.Full:
            self.unsent.append(step)

    def _drain(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            step, metrics, stamp = item
            if self._closed.is_set() or not self._send(step, metrics, stamp):
                self.unsent.append(step)

    def _send(self, step: int, metrics: dict[str, float], stamp: int) -> bool:
        for attempt in range(self.attempts):
            if attempt and self._closed.is_set():
                return False
            try:
                tracking.log_metrics(
                    self.tracking, self.run_id, metrics, step, attempts=1, timestamp_ms=stamp
                )
                return True
            except Exception as exc:
                if attempt == self.attempts - 1:
                    logger.warning(
                        "Epoch %d metrics not sent to MLflow (%s); the driver "
                        "logs them from the checkpoint history",
                        step,
                        exc,
                    )
                    return False
                time.sleep(self.backoff_s * 2**attempt)
        return False

    def close(self, timeout_s: float = 5.0) -> list[int]:
        """Wait up to ``timeout_s`` for the queue to drain; returns the steps not sent
        (or still queued). The thread is a daemon: a dead server cannot hold the worker."""
        deadline = time.monotonic() + timeout_s
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout_s)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._closed.set()
        pending: list[int] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                pending.append(item[0])
        return sorted(self.unsent + pending)
