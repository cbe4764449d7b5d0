"""Where raw rows come from: files in object storage, read by Ray Data.

A :class:`Source` says what is there now (:meth:`Source.snapshot`) and reads a chosen
subset as a Ray Dataset of raw rows with provenance (:meth:`Source.read`). Incremental
ingest compares snapshots with what earlier versions consumed. :class:`FileSource` is the
landing-zone implementation; a message-queue source (Kafka through
``ray.data.read_kafka``, with offsets as its snapshot items) plugs in behind the same two
methods.

Every file is read whole by one task, so a file that cannot be parsed (corrupt Parquet,
truncated gzip, not UTF-8) is quarantined whole with its reason while the other files go on,
and a CSV or JSON line that cannot be parsed becomes a quarantined row with its line number.
A file the store fails to deliver (throttling, a dropped connection) is fetched again with
backoff; one that still fails is reported as *failed*: not consumed, read again next time.
"""

from __future__ import annotations

import bz2
import fnmatch
import gzip
import io
import json
import logging
import posixpath
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from rayops.data.validate import ERROR, RAW, SOURCE_FILE, SOURCE_ROW
from rayops.errors import DataError, StorageError, one_line
from rayops.storage import Location

EXTENSIONS = {
    "csv": (".csv", ".csv.gz", ".csv.bz2", ".tsv"),
    "json": (".json", ".jsonl", ".ndjson", ".json.gz", ".jsonl.gz", ".ndjson.gz"),
    "parquet": (".parquet", ".pq"),
}
UNREADABLE = "unreadable file"
FAILED = "failed to read"
# Fetch attempts of one raw file, on top of the S3 client's own retries, and the first wait
# between them (doubled each time): a store that recovers within seconds loses nothing.
FETCH_ATTEMPTS = 3
FETCH_BACKOFF_S = 1.0

logger = logging.getLogger(__name__)
_GLOB_CHARS = set("*?[")


class Source(Protocol):
    """What an ingest reads from. Items are JSON-able dicts with a unique ``key``."""

    uri: str

    def snapshot(self) -> list[dict[str, Any]]:
        """Everything readable now; an item changes identity when its content may have."""
        ...

    def read(self, items: Sequence[dict[str, Any]], columns: Sequence[str]) -> ray.data.Dataset:
        """Raw rows of ``items`` with SOURCE_FILE, SOURCE_ROW, and ERROR/RAW for rejects."""
        ...


@dataclass(frozen=True)
class FileSource:
    """Files of one format under a prefix, a single file, or a glob; hive ``key=value``
    folders become columns."""

    location: Location
    fmt: str

    @property
    def uri(self) -> str:
        return self.location.uri

    def _base_and_pattern(self) -> tuple[Location, str | None]:
        parts = self.location.path.split("/")
        for i, part in enumerate(parts):
            if _GLOB_CHARS & set(part):
                base = "/".join(parts[:i])
                return (
                    Location(self.location.fs, base, self.location.uri.split(part)[0]),
                    "/".join(parts[i:]),
                )
        return self.location, None

    def snapshot(self) -> list[dict[str, Any]]:
        base, pattern = self._base_and_pattern()
        items = []
        for info in base.list_files():
            rel = (
                posixpath.relpath(info.path, base.path)
                if info.path != base.path
                else (posixpath.basename(info.path))
            )
            name = posixpath.basename(info.path)
            if name.startswith((".", "_")) or not name.lower().endswith(EXTENSIONS[self.fmt]):
                continue
            if pattern is not None and not fnmatch.fnmatchcase(rel, pattern):
                continue
            partitions = dict(p.split("=", 1) for p in rel.split("/")[:-1] if "=" in p)
            items.append(
                {
                    "key": info.path,
                    "path": info.path,
                    "size": info.size,
                    "mtime": info.mtime.isoformat() if info.mtime else None,
                    "partitions": partitions,
                }
            )
        if not items:
            raise DataError(
                f"no {self.fmt} files ({', '.join(EXTENSIONS[self.fmt])}) at {self.uri}; "
                "check data.source and data.format"
            )
        return items

    def read(self, items: Sequence[dict[str, Any]], columns: Sequence[str]) -> ray.data.Dataset:
        # One block per file: Ray then fuses read, validation and write into one task
        # per file instead of splitting blocks and shipping raw rows between tasks.
        return ray.data.read_datasource(
            _FilesDatasource(self.location, self.fmt, list(items), list(columns)),
            override_num_blocks=max(1, len(items)),
        )


# --------------------------------------------------------------------------- reading


class _FilesDatasource(Datasource):
    """One read task per group of files; each file read whole, failures become rows."""

    def __init__(
        self, location: Location, fmt: str, items: list[dict[str, Any]], columns: list[str]
    ) -> None:
        super().__init__()
        self._fs, self._fmt, self._items, self._columns = location.fs, fmt, items, columns
        self._endpoint = location.endpoint

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(int(i["size"] or 0) for i in self._items) * 2

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        groups: list[list[dict[str, Any]]] = [
            [] for _ in range(max(1, min(parallelism, len(self._items))))
        ]
        for i, item in enumerate(sorted(self._items, key=lambda it: -int(it["size"] or 0))):
            groups[i % len(groups)].append(item)
        tasks = []
        for group in groups:
            meta = BlockMetadata(
                num_rows=None,
                size_bytes=sum(int(i["size"] or 0) for i in group),
                input_files=tuple(i["path"] for i in group),
                exec_stats=None,
            )
            tasks.append(
                ReadTask(_reader(self._fs, self._fmt, group, self._columns, self._endpoint), meta)
            )
        return tasks


def _reader(
    fs: Any, fmt: str, group: list[dict[str, Any]], columns: list[str], endpoint: str | None
) -> Any:
    def read() -> Iterator[pa.Table]:
        for item in group:
            yield read_file(fs, fmt, item, columns, endpoint)

    return read


def _fetch(
    fs: Any,
    path: str,
    endpoint: str | None,
    attempts: int = FETCH_ATTEMPTS,
    backoff_s: float = FETCH_BACKOFF_S,
) -> bytes:
    """The file's bytes, retried with backoff; StorageError when every attempt failed."""
    for attempt in range(1, attempts + 1):
        try:
            with fs.open_input_stream(path, compression=None) as f:
                return f.read()
        except FileNotFoundError:
            raise StorageError(f"raw file {path} disappeared before it was read") from None
        except OSError as exc:
            if attempt == attempts:
                where = f" on endpoint {endpoint}" if endpoint else ""
                raise StorageError(
                    f"cannot read raw file {path}{where} after {attempts} attempts: {one_line(exc)}"
                ) from None
            logger.warning(
                "reading %s failed (attempt %d of %d), retrying: %s",
                path,
                attempt,
                attempts,
                one_line(exc),
            )
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def read_file(
    fs: Any, fmt: str, item: dict[str, Any], columns: list[str] | None, endpoint: str | None = None
) -> pa.Table:
    """All rows of one file (``columns`` of it, or every column when None), with
    provenance; an unreadable file is one ERROR row."""
    path = item["path"]
    partitions = item.get("partitions", {})
    # hive folders supply their columns
    in_file = None if columns is None else [c for c in columns if c not in partitions]
    # A storage failure that outlasts the retries is not the file's fault: it is reported
    # as failed (not consumed, not quarantined). Only content that cannot be parsed is.
    try:
        data = _fetch(fs, path, endpoint)
    except StorageError as exc:
        return _marker(path, f"{FAILED}: {exc}")
    try:
        if fmt == "parquet":
            table = _parquet(pa.BufferReader(data), in_file)
        else:
            data = _decompress(path, data)
            table = _csv(data, in_file) if fmt == "csv" else _jsonl(data, in_file)
    except Exception as exc:  # corrupt, truncated, not this format: quarantine the file
        return _marker(path, f"{UNREADABLE}: {type(exc).__name__}: {str(exc)[:300]}")
    for key, value in partitions.items():
        table = table.append_column(key, pa.array([value] * table.num_rows, pa.string()))
    return table.append_column(SOURCE_FILE, pa.array([path] * table.num_rows, pa.string()))


def _marker(path: str, message: str) -> pa.Table:
    """One row standing for a whole file that gave no rows."""
    return pa.table(
        {
            SOURCE_FILE: [path],
            SOURCE_ROW: pa.array([None], pa.int64()),
            RAW: pa.array([None], pa.string()),
            ERROR: [message],
        }
    )


def _decompress(path: str, data: bytes) -> bytes:
    """Whole-file decompression that fails on a truncated or corrupt archive."""
    if path.endswith(".gz"):
        return gzip.decompress(data)
    if path.endswith(".bz2"):
        return bz2.decompress(data)
    return data


def _parquet(f: Any, columns: list[str] | None) -> pa.Table:
    available = pq.ParquetFile(f).schema_arrow.names
    table = pq.read_table(f, columns=[c for c in columns or available if c in available])
    return table.append_column(SOURCE_ROW, pa.array(range(1, table.num_rows + 1), pa.int64()))


def _csv(data: bytes, columns: list[str] | None) -> pa.Table:
    bad: list[dict[str, Any]] = []
    if columns is None:  # every column of the header
        header = pacsv.open_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(use_threads=False),
            parse_options=pacsv.ParseOptions(invalid_row_handler=lambda row: "skip"),
        )
        columns = header.schema.names

    def on_invalid(row: Any) -> str:
        bad.append(
            {
                SOURCE_ROW: row.number,
                RAW: str(row.text)[:2000],
                ERROR: f"malformed line: expected {row.expected_columns} fields, "
                f"got {row.actual_columns}",
            }
        )
        return "skip"

    # Every declared column as text (we cast and judge it); one missing from the file
    # arrives as nulls, so the nullability checks decide.
    table = pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(use_threads=False),
        parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(
            include_columns=columns,
            include_missing_columns=True,
            column_types=dict.fromkeys(columns, pa.string()),
            strings_can_be_null=False,
        ),
    )
    lines = _good_line_numbers(table.num_rows, [b[SOURCE_ROW] for b in bad])
    table = table.append_column(SOURCE_ROW, pa.array(lines, pa.int64()))
    if bad:
        table = pa.concat_tables([table, pa.Table.from_pylist(bad)], promote_options="default")
    return table


def _good_line_numbers(good: int, bad_lines: list[int | None]) -> np.ndarray:
    """Physical line numbers of the parsed rows (line 1 is the header)."""
    skip = np.array(sorted({n for n in bad_lines if n is not None}), dtype=np.int64)
    candidates = np.arange(2, good + len(skip) + 2, dtype=np.int64)
    return np.setdiff1d(candidates, skip, assume_unique=True)[:good]


def _jsonl(data: bytes, columns: list[str] | None) -> pa.Table:
    try:  # fast path: consistent types on every line
        table = pajson.read_json(io.BytesIO(data))
        table = table.select([c for c in columns or table.column_names if c in table.column_names])
        return table.append_column(SOURCE_ROW, pa.array(range(1, table.num_rows + 1), pa.int64()))
    except pa.ArrowInvalid:
        pass
    records: list[dict[str, Any]] = []
    text = data.decode("utf-8")  # not UTF-8: the whole file is unreadable
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            value = None
            problem: str | None = f"malformed line: {exc.msg}"
        else:
            problem = None if isinstance(value, dict) else "malformed line: not a JSON object"
        if problem:
            records.append({SOURCE_ROW: number, RAW: line[:2000], ERROR: problem})
        else:
            keys = columns if columns is not None else list(value)
            records.append({**{c: _as_text(value.get(c)) for c in keys}, SOURCE_ROW: number})
    if columns is None:
        columns = list(dict.fromkeys(k for r in records for k in r if not k.startswith("_")))
    schema = pa.schema(
        [(c, pa.string()) for c in columns]
        + [(SOURCE_ROW, pa.int64()), (RAW, pa.string()), (ERROR, pa.string())]
    )
    return pa.Table.from_pylist(records, schema=schema)


def _as_text(value: Any) -> str | None:
    """A JSON value as the text the schema casts (types mixed across lines)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)
