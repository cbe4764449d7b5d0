"""What each replica served (and the labels clients send back), appended to Delta tables
off the request path.

A request hands its records and answers to :meth:`PredictionLog.record` (labels to
:meth:`AppendLog.put`), which only puts rows on a bounded queue: it never blocks and never
raises, and when the queue is full the rows are dropped and counted (``dropped`` in the
replica's stats), so a slow or unreachable store can cost log rows but never a request. A
thread appends what the queue holds to ``{storage.root}/predictions/{pipeline}`` (or
``feedback/{pipeline}``; the curated data's table format, partitioned by day) every
``flush_interval_s`` or ``flush_rows`` rows; a failed append is retried with the next
batch. :meth:`AppendLog.close` (a replica's clean shutdown) writes everything still queued
before it returns.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from rayops.errors import one_line
from rayops.storage import Location

logger = logging.getLogger(__name__)

FEEDBACK_SCHEMA = pa.schema([
    ("time", pa.timestamp("us", tz="UTC")),
    ("date", pa.string()),
    ("request_id", pa.string()),
    ("record_index", pa.int32()),
    ("label", pa.string()),        # the true label, JSON
])
SCHEMA = pa.schema([
    ("time", pa.timestamp("us", tz="UTC")),
    ("date", pa.string()),
    ("request_id", pa.string()),
    ("record_index", pa.int32()),  # the record's place in its request (feedback names it)
    ("model_name", pa.string()),
    ("model_version", pa.string()),
    ("record", pa.string()),       # the raw record as the client sent it, JSON
    ("prediction", pa.string()),   # the answer's prediction, JSON
    ("latency_ms", pa.float64()),
])
_STOP = object()


def log_locations(root: Location, pipeline: str) -> tuple[Location, Location]:
    """The pipeline's prediction log and feedback tables under the storage root."""
    return root.join("predictions", pipeline), root.join("feedback", pipeline)


class AppendLog:
    """A bounded queue of rows and the thread that appends them to a Delta table."""

    def __init__(self, location: Location, schema: pa.Schema, max_queue: int = 10_000,
                 flush_rows: int = 2_000, flush_interval_s: float = 2.0) -> None:
        self.location, self.schema = location, schema
        self.flush_rows, self.flush_interval_s = flush_rows, flush_interval_s
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self.counts: Counter[str] = Counter()  # sampled, dropped, written, failed_writes
        self._pending: list[tuple[Any, ...]] = []  # taken off the queue, not yet written
        self._thread = threading.Thread(target=self._run, name="rayops-append-log",
                                        daemon=True)
        self._thread.start()

    def put(self, row: tuple[Any, ...]) -> bool:
        """Queue one row (in the schema's column order); False when it was dropped."""
        try:
            self.queue.put_nowait(row)
        except queue.Full:
            self.counts["dropped"] += 1
            return False
        self.counts["sampled"] += 1
        return True

    def _run(self) -> None:
        stopping = False
        while not stopping:
            deadline = time.monotonic() + self.flush_interval_s
            while len(self._pending) < self.flush_rows:
                try:
                    item = self.queue.get(timeout=max(deadline - time.monotonic(), 0.001))
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                self._pending.append(item)
            if self._pending:
                self._write()

    def _write(self) -> None:
        from deltalake import write_deltalake

        rows = pa.Table.from_pylist(
            [dict(zip(self.schema.names, row, strict=True)) for row in self._pending],
            self.schema)
        try:
            write_deltalake(self.location.table_uri, rows, mode="append",
                            partition_by=["date"],
                            storage_options=self.location.options or None)
        except Exception as exc:  # kept for the next batch, up to the queue's size
            self.counts["failed_writes"] += 1
            logger.warning("Could not append %d row(s) to %s (kept for the next attempt): "
                           "%s", len(self._pending), self.location.uri, one_line(exc))
            overflow = len(self._pending) - self.queue.maxsize
            if overflow > 0:
                self.counts["dropped"] += overflow
                del self._pending[:overflow]
            return
        self.counts["written"] += len(self._pending)
        self._pending = []

    def close(self, timeout_s: float = 30.0) -> None:
        """Write what is queued, then stop the thread (a replica's clean shutdown)."""
        if not self._thread.is_alive():
            return
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.queue.put(_STOP, timeout=max(deadline - time.monotonic(), 0.001))
                break
            except queue.Full:
                if time.monotonic() > deadline:
                    break
        self._thread.join(max(deadline - time.monotonic(), 0.0))
        if self._pending:  # the last batch failed to write: one more try
            self._write()


class PredictionLog(AppendLog):
    """The served records and answers of one replica (a share of requests, if sampled)."""

    def __init__(self, location: Location, sample_rate: float = 1.0, max_queue: int = 10_000,
                 flush_rows: int = 2_000, flush_interval_s: float = 2.0) -> None:
        super().__init__(location, SCHEMA, max_queue, flush_rows, flush_interval_s)
        self.sample_rate = sample_rate

    def record(self, request_id: str | None, model_name: str, model_version: str,
               records: Sequence[dict[str, Any]], predictions: Sequence[dict[str, Any]],
               latency_ms: float) -> None:
        """Queue one request's rows (if sampled); never blocks, never raises."""
        try:
            if self.sample_rate < 1.0 and random.random() >= self.sample_rate:
                return
            now = dt.datetime.now(dt.UTC)
            for index, (record, answer) in enumerate(zip(records, predictions,
                                                         strict=False)):
                self.put((now, now.date().isoformat(), request_id, index, model_name,
                          model_version, json.dumps(record, default=str),
                          json.dumps(answer.get("prediction"), default=str), latency_ms))
        except Exception:  # logging must never fail a request
            self.counts["dropped"] += len(records)


def feedback_row(request_id: str, record_index: int, label: Any,
                 now: dt.datetime | None = None) -> tuple[Any, ...]:
    """One true label, as :data:`FEEDBACK_SCHEMA` stores it."""
    now = now or dt.datetime.now(dt.UTC)
    return (now, now.date().isoformat(), request_id, record_index, json.dumps(label))
