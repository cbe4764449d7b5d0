"""What a message log source (a Kafka topic, a Kinesis stream) shares: one read task per
partition (a Kafka partition, a Kinesis shard) reading exactly the planned range, message
values parsed into rows (a value that is not one record quarantined with where it was),
and the lag exported as Prometheus gauges.

A :class:`MessageSource` plans its ranges once per ingest (``pending``: from what the last
committed version consumed to the end found at planning), so a read task that Ray retries
reads the same messages and never past them; the planned items are what the ingest's
commit records as consumed, in the same Delta commit as the rows.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from rayops.data.sources import FAILED, _as_text, _marker
from rayops.data.validate import ERROR, RAW, SOURCE_FILE, SOURCE_ROW
from rayops.errors import DataError, one_line

FORMATS = ("json", "csv", "avro")


class RetentionGap(DataError):
    """Messages expired before they were read, more than data.max_lost_messages allows."""


class SourceUnavailable(DataError):
    """The broker (or Kinesis) could not be reached or refused for now (throttling):
    nothing was planned or committed; ``--watch`` tries again at its next poll."""


def check_format(fmt: str, kind: str) -> None:
    if fmt not in FORMATS:
        raise DataError(
            f"data.format: {fmt!r} is not a message format of a {kind} source "
            "(json: each message a JSON object; csv: a line of the declared "
            "columns; avro: a record of data.avro.schema)"
        )


@dataclass(frozen=True)
class AvroDecoder:
    """Avro message values of one writer's schema, framed by Confluent's serializers (a
    zero byte and a 4-byte schema id before the record; the id is not looked up) or bare."""

    schema: dict[str, Any]  # parsed by fastavro
    framing: str

    @classmethod
    def parse(cls, text: bytes, framing: str, where: str) -> AvroDecoder:
        fastavro = _fastavro()
        try:
            parsed = fastavro.parse_schema(json.loads(text))
        except (ValueError, TypeError, KeyError, fastavro.schema.SchemaParseException) as exc:
            raise DataError(f"{where} is not an Avro schema: {one_line(exc)}") from None
        if not isinstance(parsed, dict) or parsed.get("type") != "record":
            raise DataError(f"{where} is not an Avro record schema (a message is one record)")
        return cls(parsed, framing)

    def decode(self, value: bytes) -> Mapping[str, Any]:
        """The record ``value`` holds; a ValueError saying why it holds none."""
        body = value
        if self.framing == "confluent":
            if len(value) < 5 or value[0] != 0:
                raise ValueError(
                    "not Confluent's Avro framing (a zero byte and a 4-byte "
                    "schema id before the record)"
                )
            body = value[5:]
        buffer = io.BytesIO(body)
        try:
            record = _fastavro().schemaless_reader(buffer, self.schema)
        except (EOFError, ValueError, IndexError, KeyError, TypeError, OverflowError) as exc:
            raise ValueError(
                f"not a record of the Avro schema ({type(exc).__name__}: {str(exc)[:200]})"
            ) from None
        if buffer.tell() != len(body):
            raise ValueError(f"{len(body) - buffer.tell()} byte(s) after the Avro record")
        return record


def _fastavro() -> Any:
    try:
        import fastavro
        import fastavro.schema
    except ImportError:  # a dependency: only a broken install lacks it
        raise DataError(
            "data.format is avro but fastavro is not installed: pip install fastavro"
        ) from None
    return fastavro


class MessageSource:
    """A log of messages in partitions. Subclasses say what is there (``snapshot``), what
    is new (``pending``), how far behind the log each partition is (``lag``) and fetch a
    planned range (``fetch``); reading, parsing and quarantine are shared."""

    uri: str
    name: str  # the topic or stream
    fmt: str
    columns: tuple[str, ...]  # the declared columns, in order: a CSV message's fields
    avro: AvroDecoder | None  # data.format avro
    unit = "partition"  # what a part of the log is called in messages

    def with_avro(self, avro: AvroDecoder) -> MessageSource:
        return dataclasses.replace(self, avro=avro)  # type: ignore[type-var]

    def snapshot(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def pending(
        self, consumed: Mapping[str, Mapping[str, Any]], items: list[dict[str, Any]], max_lost: int
    ) -> tuple[list[dict[str, Any]], int]:
        """The partitions with messages past what was consumed, and how many messages
        expired unread (a RetentionGap over ``max_lost``)."""
        raise NotImplementedError

    def lag(self, todo: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per partition read: ``partition``, ``start``, ``end``, ``lag_messages`` and
        ``lag_s`` (the oldest unread message's age; None when unknown)."""
        raise NotImplementedError

    def describe(self, lag: Mapping[str, Any]) -> str:
        """One partition's planned range, for the log."""
        raise NotImplementedError

    def fetch(self, item: dict[str, Any]) -> list[tuple[int | str, bytes | None]]:
        """(position, value) of every message planned for ``item``; a DataError (or one
        of ``transient()``) when the log does not deliver them."""
        raise NotImplementedError

    def transient(self) -> tuple[type[BaseException], ...]:
        """The client's errors that make a partition *failed* (read again next time)."""
        return (DataError,)

    def read(self, items: Sequence[dict[str, Any]], columns: Sequence[str]) -> ray.data.Dataset:
        return ray.data.read_datasource(
            _PartitionsDatasource(self, list(items), list(columns)),
            override_num_blocks=max(1, len(items)),
        )


_GAUGES: dict[str, Any] = {}  # made at the first export (never at import)


def export_lag(
    dataset: str, name: str, items: list[dict[str, Any]], partitions: list[dict[str, Any]]
) -> None:
    """Each partition's lag at planning as Prometheus gauges (Ray's metrics export, from
    the driver): ``rayops_ingest_lag_messages`` and ``rayops_ingest_lag_seconds``, tagged
    with the dataset, the topic (or stream) and the partition (or shard); 0 for a
    partition with nothing new."""
    import ray

    if not ray.is_initialized():
        return
    from ray.util import metrics

    if not _GAUGES:
        tags = ("dataset", "topic", "partition")
        _GAUGES["messages"] = metrics.Gauge(
            "rayops_ingest_lag_messages",
            "Messages of a topic's partition not yet in a "
            "committed version, at the last ingest's planning.",
            tag_keys=tags,
        )
        _GAUGES["seconds"] = metrics.Gauge(
            "rayops_ingest_lag_seconds",
            "Age of the oldest message of a partition not yet "
            "in a committed version, at the last ingest's planning.",
            tag_keys=tags,
        )
    behind = {str(p["partition"]): p for p in partitions}
    for item in items:
        lag = behind.get(str(item["partition"]), {})
        values = {"dataset": dataset, "topic": name, "partition": str(item["partition"])}
        _GAUGES["messages"].set(float(lag.get("lag_messages") or 0), tags=values)
        _GAUGES["seconds"].set(float(lag.get("lag_s") or 0), tags=values)


# --------------------------------------------------------------------------- reading


class _PartitionsDatasource(Datasource):
    """One read task per partition, each reading exactly its planned range."""

    def __init__(
        self, source: MessageSource, items: list[dict[str, Any]], columns: list[str]
    ) -> None:
        super().__init__()
        self._source, self._items, self._columns = source, items, columns

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        tasks = []
        for item in self._items:
            meta = BlockMetadata(
                num_rows=None, size_bytes=None, input_files=(item["path"],), exec_stats=None
            )
            tasks.append(ReadTask(_partition_reader(self._source, item, self._columns), meta))
        return tasks


def _partition_reader(source: MessageSource, item: dict[str, Any], columns: list[str]) -> Any:
    def read() -> Iterator[pa.Table]:
        yield read_partition(source, item, columns)

    return read


def read_partition(source: MessageSource, item: dict[str, Any], columns: list[str]) -> pa.Table:
    """The rows of one partition's planned range, whole, or one *failed* marker row (the
    log did not deliver them: nothing of the partition is consumed, it is read again by
    the next ingest). Any other error is raised: never counted as the log's."""
    try:
        values = source.fetch(item)
    except source.transient() as exc:
        return _marker(item["path"], f"{FAILED}: {one_line(exc)}")
    return parse_messages(
        values, source.fmt, columns, list(source.columns), item["path"], source.avro
    )


def parse_messages(
    values: list[tuple[int | str, bytes | None]],
    fmt: str,
    columns: list[str],
    declared: list[str],
    where: str,
    avro: AvroDecoder | None = None,
) -> pa.Table:
    """Rows of ``columns`` (text, cast later by the schema) from message values; a value
    that is not one record is an ERROR row with its position: a Kafka offset in
    SOURCE_ROW, a Kinesis sequence number (too long for an integer) after ``where:``.
    Columns are made whole (a column of one JSON type at C speed), each value as
    ``_as_text`` writes it."""
    positions: list[int | None] = []
    records: list[Mapping[str, Any]] = []
    bad: list[dict[str, Any]] = []
    for position, value in values:
        try:
            record = _record(value, fmt, declared, avro)
        except ValueError as exc:
            raw = (value or b"")[:2000].decode("utf-8", "replace")
            row, at = (
                (position, where) if isinstance(position, int) else (None, f"{where}:{position}")
            )
            bad.append(
                {SOURCE_ROW: row, RAW: raw, ERROR: f"malformed message: {exc}", SOURCE_FILE: at}
            )
            continue
        positions.append(position if isinstance(position, int) else None)
        records.append(record)
    schema = pa.schema(
        [(c, pa.string()) for c in columns]
        + [
            (SOURCE_ROW, pa.int64()),
            (RAW, pa.string()),
            (ERROR, pa.string()),
            (SOURCE_FILE, pa.string()),
        ]
    )
    good = pa.Table.from_arrays(
        [_text_column([r.get(c) for r in records]) for c in columns]
        + [
            pa.array(positions, pa.int64()),
            pa.nulls(len(records), pa.string()),
            pa.nulls(len(records), pa.string()),
            pa.array([where] * len(records), pa.string()),
        ],
        schema=schema,
    )
    return pa.concat_tables([good, pa.Table.from_pylist(bad, schema=schema)]) if bad else good


def _text_column(values: list[Any]) -> pa.Array:
    """``values`` as text, each as ``_as_text`` writes it: text, integers, booleans and
    nulls converted by Arrow; anything else (floats, objects, mixed types) one by one."""
    try:
        array = pa.array(values)
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        array = None
    if array is not None and (
        pa.types.is_string(array.type)
        or pa.types.is_integer(array.type)
        or pa.types.is_boolean(array.type)
        or pa.types.is_null(array.type)
    ):
        return array.cast(pa.string())
    return pa.array([_as_text(v) for v in values], pa.string())


def _record(
    value: bytes | None, fmt: str, declared: list[str], avro: AvroDecoder | None = None
) -> Mapping[str, Any]:
    if value is None:
        raise ValueError("no value (a tombstone)")
    if fmt == "avro":
        if avro is None:
            raise DataError("data.format is avro but no data.avro.schema was given")
        return avro.decode(value)
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    if fmt == "json":
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(exc.msg) from None
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        return record
    rows = list(csv.reader(io.StringIO(text)))
    if len(rows) != 1 or len(rows[0]) != len(declared):
        got = len(rows[0]) if len(rows) == 1 else f"{len(rows)} lines"
        raise ValueError(f"expected one line of {len(declared)} fields, got {got}")
    return dict(zip(declared, rows[0], strict=True))
