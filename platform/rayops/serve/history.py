"""The latest curated rows of a series or a user: the history of a /forecast request that
sends none, a user's interactions for /recommend. The dataset's latest version is looked up
at most every ``refresh_s`` seconds; a series' rows are read from it on each such request
(pushed down to Parquet); a user's come from the version's rows, read once and indexed
(:meth:`CuratedHistory.rows_of`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from rayops.config import StorageConfig
from rayops.data.series import SeriesLayout
from rayops.data.versions import DatasetVersion, dataset_location, latest_at
from rayops.errors import DataError, HistoryUnavailable, one_line

# A recommender's replica keeps a version of up to this many interactions in memory,
# indexed by user (about 30 MB at a million); larger ones are read a user at a time.
INDEXED_ROWS = 5_000_000


class CuratedHistory:
    """Reads series' latest observations from the curated dataset ``dataset``."""

    def __init__(self, storage: StorageConfig | None, dataset: str, refresh_s: float) -> None:
        self.storage, self.dataset, self.refresh_s = storage, dataset, max(refresh_s, 1.0)
        self._version: DatasetVersion | None = None
        self._looked_at = 0.0
        self._lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._index: tuple[tuple[str, str], pa.Table, dict[Any, Any]] | None = None

    def latest(self) -> DatasetVersion | None:
        with self._lock:
            if self.storage is not None and (
                self._version is None or time.monotonic() - self._looked_at > self.refresh_s
            ):
                self._version = latest_at(
                    dataset_location(self.storage, self.dataset), self.dataset
                )
                self._looked_at = time.monotonic()
            return self._version

    def rows_of(self, column: str, value: Any) -> pa.Table:
        """Every curated row whose ``column`` holds ``value`` (a user's interactions): none
        when the dataset has no version yet. A version of at most :data:`INDEXED_ROWS` rows
        is read once and indexed by ``column`` (a request then reads memory, not the
        store); a larger one is read per request, one value pushed down to Parquet. A store
        that cannot be read is a HistoryUnavailable (the caller's 503)."""
        try:
            version = self.latest()
            if version is None:
                return pa.table({})
            if version.manifest.rows.train > INDEXED_ROWS:
                return version.rows_where({column: value})
            table, index = self._indexed(version, column)
            return table.take(pa.array(index.get(value, []), pa.int64()))
        except Exception as exc:
            raise HistoryUnavailable(
                f"the curated dataset {self.dataset!r} could not be read ({one_line(exc)}): retry"
            ) from None

    def _indexed(self, version: DatasetVersion, column: str) -> tuple[pa.Table, dict[Any, Any]]:
        """The version's rows and, per value of ``column``, where they are (built once per
        version)."""
        with self._index_lock:
            if self._index is None or self._index[0] != (version.id, column):
                table = version.table("train")
                keys = table.column(column).to_pandas()
                self._index = ((version.id, column), table, keys.groupby(keys, sort=False).indices)
            return self._index[1], self._index[2]

    def rows(self, layout: SeriesLayout, series: Mapping[str, Any] | None) -> pa.Table:
        """The series' observations of the last ``lookback`` steps the data holds. A store
        that cannot be read is a HistoryUnavailable (the caller's 503), never a model's
        failure: another model would not read it either."""
        try:
            version = self.latest()
            rows = None if version is None else version.rows_where(dict(series or {}))
        except Exception as exc:
            raise HistoryUnavailable(
                f"history: none sent, and the curated dataset {self.dataset!r} could not be "
                f"read ({one_line(exc)}): send the series' history, or retry"
            ) from None
        if version is None or rows is None:
            raise DataError(
                f"history: none sent, and the curated dataset {self.dataset!r} "
                "has no version to read it from: send the series' history"
            )
        if not rows.num_rows:
            raise DataError(
                f"history: none sent, and {version.id} holds no observation of "
                "this series: send its history"
            )
        micros = pc.cast(rows.column(layout.timestamp), pa.int64())
        since = pc.max(micros).as_py() - (layout.lookback - 1) * layout.step_us
        return rows.filter(pc.greater_equal(micros, since))
