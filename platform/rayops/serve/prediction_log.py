"""What each replica served (and the labels clients send back), appended to Delta tables
off the request path.

A request hands its records and answers to :meth:`PredictionLog.record` (labels to
:meth:`AppendLog.put`), which only puts rows on a bounded queue: it never blocks and never
raises, and when the queue is full the rows are dropped and counted (``dropped`` in the
replica's stats), so a slow or unreachable store can cost log rows but never a request. A
thread appends what the queue holds to ``{storage.root}/predictions/{pipeline}`` (or
``feedback/{pipeline}``; the curated data's table format, partitioned by day) every
``flush_interval_s``, or once ``flush_rows`` rows wait (half the queue: each append is one
commit, whose cost is mostly fixed, 15-50 ms of CPU, so fewer and larger appends cost the
replica less); a failed append is retried with the next batch. :meth:`AppendLog.close`
(a replica's clean shutdown) writes everything still queued before it returns.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import threading
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from rayops.errors import StorageError, one_line
from rayops.storage import Location

logger = logging.getLogger(__name__)

FEEDBACK_SCHEMA = pa.schema(
    [
        ("time", pa.timestamp("us", tz="UTC")),
        ("date", pa.string()),
        ("request_id", pa.string()),
        ("record_index", pa.int32()),
        ("label", pa.string()),  # the true label, JSON
    ]
)
SCHEMA = pa.schema(
    [
        ("time", pa.timestamp("us", tz="UTC")),
        ("date", pa.string()),
        ("request_id", pa.string()),
        ("record_index", pa.int32()),  # the record's place in its request (feedback names it)
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("record", pa.string()),  # the raw record as the client sent it, JSON
        ("prediction", pa.string()),  # the answer's prediction, JSON
        ("latency_ms", pa.float64()),
        # who answered: "champion", "canary" (a canary share's answer), "fallback" (the previous
        # champion, after the current one failed), "shadow" (mirrored, never returned)
        ("role", pa.string()),
        ("error", pa.string()),  # why the model failed on this record (prediction null)
    ]
)
ROLES = ("champion", "canary", "fallback", "shadow")


def append_rows(location: Location, rows: Sequence[tuple[Any, ...]], schema: pa.Schema) -> None:
    """Append rows (tuples in the schema's column order) to the day-partitioned Delta table
    at ``location``; a table written by an older rayops gains the new columns."""
    from deltalake import write_deltalake

    columns = list(zip(*rows, strict=True))  # column-wise: a quarter of from_pylist's time
    table = pa.Table.from_arrays(
        [pa.array(c, f.type) for c, f in zip(columns, schema, strict=True)], schema=schema
    )
    write_deltalake(
        location.table_uri,
        table,
        mode="append",
        partition_by=["date"],
        schema_mode="merge",
        storage_options=location.options or None,
    )


def read_log(
    location: Location, columns: Sequence[str], since: dt.datetime | None = None
) -> pa.Table | None:
    """The rows of a log table since ``since`` (all when None), only ``columns`` (and
    ``time``); None when nothing was ever written there."""
    from rayops.data.table import open_table

    table = open_table(location)
    if table is None:
        return None
    filters = [("date", ">=", since.date().isoformat())] if since else None
    wanted = list(dict.fromkeys([*columns, "time"]))
    present = {f.name for f in table.schema().fields}
    rows = table.to_pyarrow_table(columns=[c for c in wanted if c in present], filters=filters)
    for name in wanted:  # a column an older rayops did not write: all null
        if name not in rows.column_names:
            rows = rows.append_column(name, pa.nulls(rows.num_rows, pa.string()))
    if since is not None:
        rows = rows.filter(pc.greater_equal(rows["time"], pa.scalar(since, rows["time"].type)))
    return rows


def log_locations(root: Location, pipeline: str) -> tuple[Location, Location]:
    """The pipeline's prediction log and feedback tables under the storage root."""
    return root.join("predictions", pipeline), root.join("feedback", pipeline)


@dataclass(frozen=True)
class _Waiting:
    """Rows whose sender waits until they are stored (a group commit)."""

    rows: Sequence[tuple[Any, ...]]
    stored: Future[int]


class AppendLog:
    """A bounded buffer of rows and the thread that appends them to a Delta table.

    A request only appends to a deque (atomic, no lock, no thread woken): the writer wakes
    every ``flush_interval_s``, or once ``flush_rows`` rows wait, and takes them all. Rows
    put with :meth:`put_stored` wake it at once, and their future completes only when the
    commit holding them has landed (every sender waiting then shares one commit)."""

    def __init__(
        self,
        location: Location,
        schema: pa.Schema,
        max_queue: int = 20_000,
        flush_rows: int | None = None,
        flush_interval_s: float = 2.0,
    ) -> None:
        self.location, self.schema = location, schema
        self.max_queue = max_queue
        self.flush_rows = max(1, max_queue // 2) if flush_rows is None else flush_rows
        self.flush_interval_s = flush_interval_s
        self.counts: Counter[str] = Counter()  # sampled, dropped, written, failed_writes
        self._rows: deque[tuple[Any, ...] | _Waiting] = deque()  # queued by requests
        self._pending: list[tuple[Any, ...]] = []  # taken by the writer, not yet written
        self._due = threading.Event()  # write now: flush_rows are waiting, or closing
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="rayops-append-log", daemon=True)
        self._thread.start()

    def put(self, row: tuple[Any, ...]) -> bool:
        """Queue one row (in the schema's column order); False when it was dropped."""
        if len(self._rows) >= self.max_queue:
            self.counts["dropped"] += 1
            return False
        self._rows.append(row)
        self.counts["sampled"] += 1
        if len(self._rows) >= self.flush_rows:
            self._due.set()
        return True

    def put_stored(self, rows: Sequence[tuple[Any, ...]]) -> Future[int]:
        """Queue rows to be written now; the future gives how many once they are stored in
        the table, or fails with why they are not (a full queue, a failed commit: the
        sender may send them again)."""
        stored: Future[int] = Future()
        if self._closing or len(self._rows) + len(rows) > self.max_queue:
            stored.set_exception(
                StorageError(f"the queue for {self.location.uri} is full or closing")
            )
            return stored
        self._rows.append(_Waiting(rows, stored))
        self.counts["sampled"] += len(rows)
        self._due.set()
        return stored

    def _run(self) -> None:
        while True:
            self._due.wait(self.flush_interval_s)
            self._due.clear()
            closing = self._closing
            waiting: list[_Waiting] = []
            while self._rows:
                item = self._rows.popleft()
                if isinstance(item, _Waiting):
                    self._pending.extend(item.rows)
                    waiting.append(item)
                else:
                    self._pending.append(item)
            if self._pending:
                self._write(waiting)
            if closing:
                return

    def _write(self, waiting: Sequence[_Waiting] = ()) -> None:
        try:
            append_rows(self.location, self._pending, self.schema)
        except Exception as exc:  # kept for the next batch, up to the queue's size
            self.counts["failed_writes"] += 1
            logger.warning(
                "Could not append %d row(s) to %s (kept for the next attempt): %s",
                len(self._pending),
                self.location.uri,
                one_line(exc),
            )
            for item in waiting:  # their senders are told; a second send counts once
                item.stored.set_exception(
                    StorageError(f"cannot append to {self.location.uri}: {one_line(exc)}")
                )
            overflow = len(self._pending) - self.max_queue
            if overflow > 0:
                self.counts["dropped"] += overflow
                del self._pending[:overflow]
            return
        self.counts["written"] += len(self._pending)
        self._pending = []
        for item in waiting:
            item.stored.set_result(len(item.rows))

    def close(self, timeout_s: float = 30.0) -> None:
        """Write what is queued, then stop the thread (a replica's clean shutdown)."""
        if not self._thread.is_alive():
            return
        self._closing = True
        self._due.set()
        self._thread.join(timeout_s)
        if self._pending and not self._thread.is_alive():  # the last write failed: once more
            self._write()


class PredictionLog(AppendLog):
    """The served records and answers of one replica (a share of requests, if sampled)."""

    def __init__(
        self,
        location: Location,
        sample_rate: float = 1.0,
        max_queue: int = 20_000,
        flush_rows: int | None = None,
        flush_interval_s: float = 2.0,
    ) -> None:
        super().__init__(location, SCHEMA, max_queue, flush_rows, flush_interval_s)
        self.sample_rate = sample_rate

    def record(
        self,
        request_id: str | None,
        model_name: str,
        model_version: str,
        records: Sequence[dict[str, Any]],
        predictions: Sequence[dict[str, Any]] | None,
        latency_ms: float,
        role: str = "champion",
        error: str | None = None,
        sampled: bool | None = None,
    ) -> None:
        """Queue one request's rows (if sampled; ``sampled`` decides it for the caller);
        ``predictions`` None with the ``error`` that stopped the model. Never blocks, never
        raises."""
        try:
            if not (self.sampled() if sampled is None else sampled):
                return
            now = dt.datetime.now(dt.UTC)
            date = now.date().isoformat()
            for index, record in enumerate(records):
                answer = predictions[index].get("prediction") if predictions else None
                self.put(
                    (
                        now,
                        date,
                        request_id,
                        index,
                        model_name,
                        model_version,
                        json.dumps(record, default=str),
                        None if predictions is None else json.dumps(answer, default=str),
                        latency_ms,
                        role,
                        error,
                    )
                )
        except Exception:  # logging must never fail a request
            self.counts["dropped"] += len(records)

    def sampled(self) -> bool:
        """Whether this request goes in the log (``serve.log_sample_rate``)."""
        return self.sample_rate >= 1.0 or random.random() < self.sample_rate


def feedback_row(
    request_id: str, record_index: int, label: Any, now: dt.datetime | None = None
) -> tuple[Any, ...]:
    """One true label, as :data:`FEEDBACK_SCHEMA` stores it."""
    now = now or dt.datetime.now(dt.UTC)
    return (now, now.date().isoformat(), request_id, record_index, json.dumps(label))
