"""Delta Lake tables on a :class:`~rayops.storage.Location` (delta-rs, no Spark, no lock
service): files are written first by any number of tasks, then made visible by one commit.

A commit either lands whole or not at all: delta-rs writes the next log entry with a
put-if-absent (a local rename that never replaces, S3's conditional write). A file written
by a task that failed, was retried or belongs to an ingest that never committed is in no
log entry, so no reader sees it; :func:`vacuum` removes such files once they are older
than the retention window, never sooner (an ingest may still be writing them).
"""

from __future__ import annotations

import json
import posixpath
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Transaction
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.transaction import AddAction

from rayops.errors import DataError, StorageError, one_line
from rayops.storage import Location

# Every ingest commit carries this application transaction: two ingests that read the same
# table version and both try to commit conflict, and the second fails whole.
INGEST_APP = "rayops.ingest"
# A checkpoint every 10 commits: opening a table reads at most one checkpoint and nine
# log entries, however long its history. delta-rs would also delete, at each checkpoint,
# the log entries older than delta.logRetentionDuration (30 days), whatever version a
# registered model trained on; rayops expires the log itself (:func:`expire_log`).
LOG_CLEANUP = "delta.enableExpiredLogCleanup"
TABLE_CONFIGURATION = {"delta.checkpointInterval": "10", LOG_CLEANUP: "false"}
_LOG_FILE = re.compile(r"^(\d{20})\.(json|checkpoint|crc)")


class CommitConflict(DataError):
    """Another writer committed to the table first; nothing of this write is visible."""


def _storage_error(location: Location, operation: str, exc: Exception) -> StorageError:
    where = f" on endpoint {location.endpoint}" if location.endpoint else ""
    return StorageError(f"cannot {operation} Delta table {location.uri}{where}: {one_line(exc)}")


def open_table(location: Location, version: int | None = None) -> DeltaTable | None:
    """The table (at ``version``; latest when None), or None when there is none yet."""
    try:
        return DeltaTable(
            location.table_uri, version=version, storage_options=location.options or None
        )
    except TableNotFoundError:
        return None
    except Exception as exc:  # delta-rs raises OSError / DeltaError for storage failures
        if version is not None and "version" in str(exc).lower():
            raise DataError(
                f"Delta table {location.uri} has no version {version}: {one_line(exc)}"
            ) from None
        raise _storage_error(location, "open", exc) from None


def ensure_table(location: Location, schema: pa.Schema, partition_by: list[str]) -> DeltaTable:
    """Open the table, creating it empty (version 0) when it does not exist."""
    table = open_table(location)
    if table is not None:
        return _own_log_cleanup(location, table)
    try:
        DeltaTable.create(
            location.table_uri,
            schema,
            mode="ignore",
            partition_by=partition_by,
            configuration=TABLE_CONFIGURATION,
            storage_options=location.options or None,
        )
    except Exception as exc:
        # Another writer created it at the same moment: use theirs.
        if (table := open_table(location)) is not None:
            return table
        raise _storage_error(location, "create", exc) from None
    table = open_table(location)
    assert table is not None
    return table


def _own_log_cleanup(location: Location, table: DeltaTable) -> DeltaTable:
    """A table made before rayops expired its log itself: delta-rs' own clean-up turned off
    (one metadata commit, once)."""
    if table.metadata().configuration.get(LOG_CLEANUP) == "false":
        return table
    try:
        table.alter.set_table_properties({LOG_CLEANUP: "false"})
    except Exception as exc:  # another writer may have done it at the same moment
        again = open_table(location)
        if again is None or again.metadata().configuration.get(LOG_CLEANUP) != "false":
            raise _storage_error(location, "configure", exc) from None
        return again
    table.update_incremental()
    return table


def write_file(
    location: Location, rows: pa.Table, partition: Mapping[str, str] | None = None
) -> AddAction:
    """One Parquet file under the table (in its hive folder), not yet part of any version."""
    partition = dict(partition or {})
    folder = "/".join(f"{k}={v}" for k, v in partition.items())
    relative = "/".join(p for p in (folder, f"part-{uuid.uuid4().hex}.parquet") if p)
    target = location.join(relative)
    target.parent().makedirs()
    with target.io("write curated rows to"):
        pq.write_table(rows, target.path, filesystem=target.fs)
        size = target.fs.get_file_info(target.path).size
    return AddAction(
        relative,
        int(size),
        partition,
        int(time.time() * 1000),
        True,
        json.dumps({"numRecords": rows.num_rows}),
    )


def action_to_dict(action: AddAction) -> dict[str, Any]:
    return {
        "path": action.path,
        "size": action.size,
        "partition_values": dict(action.partition_values),
        "modification_time": action.modification_time,
        "stats": action.stats,
    }


def action_from_dict(
    value: Mapping[str, Any], partition: Mapping[str, str] | None = None
) -> AddAction:
    return AddAction(
        value["path"],
        value["size"],
        {**value["partition_values"], **(partition or {})},
        value["modification_time"],
        True,
        value["stats"],
    )


def commit(
    location: Location,
    table: DeltaTable,
    actions: list[AddAction],
    *,
    mode: str,
    schema: pa.Schema,
    partition_by: list[str],
    metadata: Mapping[str, str],
    transaction: Transaction,
) -> int:
    """Make ``actions`` visible in one new version of ``table`` (read at the version the
    caller planned against); returns the new version number."""
    planned = table.version()
    try:
        table.create_write_transaction(
            actions,  # type: ignore[arg-type]
            mode,
            schema,
            partition_by,
            commit_properties=CommitProperties(
                custom_metadata=dict(metadata), app_transactions=[transaction]
            ),
        )
    except CommitFailedError as exc:
        # delta-rs' conflict checker: "Concurrent append", "Metadata changed since last
        # commit" (both created the table), "Protocol changed ...", "version ... exists"
        if not any(
            word in str(exc).lower()
            for word in ("concurrent", "conflict", "exists", "changed since last commit")
        ):
            raise _storage_error(location, "commit to", exc) from None
        raise CommitConflict(
            f"another ingest committed to {location.uri} after version {planned} while this "
            f"one was writing ({one_line(exc)}); nothing of this ingest is visible. Run it "
            "again: it ingests what is still new."
        ) from None
    except Exception as exc:
        raise _storage_error(location, "commit to", exc) from None
    table.update_incremental()
    return table.version()


def vacuum(
    location: Location, retention_hours: int, keep_versions: Sequence[int] = ()
) -> list[str]:
    """Delete files no version within the retention window (nor any of ``keep_versions``)
    needs, and files no version ever named (failed or retried writes) once they are older
    than the window."""
    table = open_table(location)
    if table is None:
        return []
    try:
        # The window is the user's (data.retention_hours), not the table's default week.
        return table.vacuum(
            retention_hours=retention_hours,
            dry_run=False,
            full=True,
            enforce_retention_duration=False,
            keep_versions=sorted(keep_versions) or None,
        )
    except Exception as exc:
        raise _storage_error(location, "clean up", exc) from None


def _log_files(location: Location) -> list[tuple[int, str, pafs.FileInfo]]:
    """(version, kind, file) of every numbered file in the table's log."""
    found = []
    for info in location.join("_delta_log").list_files():
        match = _LOG_FILE.match(posixpath.basename(info.path))
        if match:
            found.append((int(match[1]), match[2], info))
    return found


def first_young_version(location: Location, cutoff: float) -> int | None:
    """The oldest version whose log entry was written after ``cutoff`` (a Unix time)."""
    young = [
        v
        for v, kind, info in _log_files(location)
        if kind == "json" and info.mtime is not None and info.mtime.timestamp() >= cutoff
    ]
    return min(young, default=None)


def expire_log(location: Location, keep_from: int) -> list[str]:
    """Remove the log entries and checkpoints before the newest checkpoint at or below
    ``keep_from``: every version from ``keep_from`` on still loads (that checkpoint and the
    entries after it), older ones may not."""
    files = _log_files(location)
    checkpoints = [v for v, kind, _ in files if kind == "checkpoint" and v <= keep_from]
    if not checkpoints:
        return []
    floor, removed = max(checkpoints), []
    for version, _, info in files:
        if version < floor:
            location.child(info.path).delete()
            removed.append(info.path)
    return removed
