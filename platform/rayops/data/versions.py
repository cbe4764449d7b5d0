"""Curated datasets as Delta Lake tables; a dataset version is a table version.

Layout under ``{root}/curated/{dataset}/``::

    rows/          Delta table of the kept rows, partitioned by rayops_split (train, valid);
                   each ingest's commit carries its manifest as commit metadata
                   (``rayops.manifest``: row accounting, schema contract, preprocessing
                   state, reference profile, failed files, the state file's name)
    quarantine/    Delta table of the rejected rows: source_file, line, reason, raw,
                   dataset_version (partition)
    state/*.json   per commit: the consumed source files and mergeable statistics that the
                   next incremental ingest starts from (immutable, named in the manifest)

An ingest writes its files first, then commits ``rows`` (the commit point: a crash before
it leaves nothing visible), then appends its rejects to ``quarantine`` under an application
transaction id equal to the dataset version, so that append happens exactly once whoever
completes it: the ingest itself, or the next reader or ingest if it died in between.
Anything can read any version back (``DeltaTable(uri, version=N)``) without rayops.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import ray.data
from deltalake import DeltaTable, Transaction

from rayops.config import PipelineConfig, StorageConfig
from rayops.data import table as delta
from rayops.data.context import data_context
from rayops.data.manifest import Manifest
from rayops.data.preprocess import Preprocessor
from rayops.data.series import VALIDATION_KEY
from rayops.data.validate import SPLIT
from rayops.errors import DataError
from rayops.storage import Location, root_of
from rayops.tracking.tags import DATASET_TAG

logger = logging.getLogger(__name__)

ROWS = "rows"
QUARANTINE = "quarantine"
STATE = "state"
MANIFEST_KEY = "rayops.manifest"
QUARANTINE_APP = "rayops.quarantine"
DATASET_VERSION = "dataset_version"
QUARANTINE_SCHEMA = pa.schema(
    [
        ("source_file", pa.string()),
        ("line", pa.int64()),
        ("reason", pa.string()),
        ("raw", pa.string()),
        (DATASET_VERSION, pa.int64()),
    ]
)
_HISTORY_SCAN = 50  # maintenance commits (vacuum) between two ingest commits, at most


@dataclass(frozen=True)
class DatasetVersion:
    """A committed curated dataset version (a version of its ``rows`` table)."""

    name: str
    version: int
    root: Location
    manifest: Manifest

    @property
    def id(self) -> str:
        return f"{self.name}/v{self.version:06d}"

    @property
    def uri(self) -> str:
        return f"{self.root.join(ROWS).uri}@v{self.version}"

    @property
    def base(self) -> int:
        """The version this one's data was last rebuilt in (all earlier rows replaced)."""
        return int(self.manifest.base or self.version)

    @property
    def preprocessor(self) -> Preprocessor:
        return Preprocessor.from_dict(self.manifest.preprocessor)

    @property
    def examples(self) -> dict[str, int]:
        """About how many examples each split gives a model: its rows, or for series the
        count estimated when the preprocessing was fitted."""
        built = self.manifest.preprocessor.get("series") or self.manifest.preprocessor.get(
            "interactions"
        )
        if built:
            return dict(built["examples"])
        return {"train": self.manifest.rows.train, "valid": self.manifest.rows.valid}

    def scored_rows(self) -> pa.Table:
        """The labelled rows models are scored on (the gate, evaluation plots): the
        validation split, or for series every observation, carrying the start of the
        validation period (each model builds its own examples of it)."""
        pre = self.preprocessor
        if pre.built is None:
            return self.table("valid")
        rows = self.table(pre.reads_from("valid"))
        if pre.series is None:  # interactions: each model holds out its own
            return rows
        start = pre.series["layout"]["validation_start"]
        return rows.replace_schema_metadata({VALIDATION_KEY: start.encode()})

    def rows_where(self, series: Mapping[str, Any]) -> pa.Table:
        """The rows with these columns' values (a series' observations, a user's
        interactions) in this version."""
        files = self.split_files(self.preprocessor.reads_from("valid"))
        if not files:
            return pa.table({})
        where = None
        for name, value in series.items():
            test = pads.field(name) == value
            where = test if where is None else where & test
        dataset = pads.dataset([f.path for f in files], filesystem=files[0].fs, format="parquet")
        with files[0].io("read"):
            return dataset.to_table(filter=where)

    def split_files(self, split: str) -> list[Location]:
        """The Parquet files holding the split's rows in this version."""
        rows = self.root.join(ROWS)
        table = delta.open_table(rows, self.version)
        if table is None:
            raise DataError(f"dataset {self.id}: its table {rows.uri} is gone")
        uris = table.file_uris(partition_filters=[(SPLIT, "=", split)])
        return [rows.child(uri) for uri in sorted(uris)]

    def table(self, split: str, limit: int | None = None) -> pa.Table:
        """The split's rows read on this machine (for inspection; train with :meth:`read`).
        ``"quarantine"`` gives :meth:`quarantine`."""
        if split == QUARANTINE:
            return self.quarantine(limit)
        files = self.split_files(split)
        if not files:
            return pa.table({})
        dataset = pads.dataset([f.path for f in files], filesystem=files[0].fs, format="parquet")
        with files[0].io("read"):
            return dataset.head(limit) if limit is not None else dataset.to_table()

    def read(self, split: str) -> ray.data.Dataset:
        """The split's typed rows as a lazy Ray Dataset."""
        files = self.split_files(split)
        if not files:
            raise DataError(f"dataset {self.id} has no {split!r} rows")
        with data_context():
            return ray.data.read_parquet([f.path for f in files], filesystem=files[0].fs)

    def quarantine(self, limit: int | None = None) -> pa.Table:
        """Rows this version rejected (since its last rebuild): source_file, line, reason,
        raw, dataset_version."""
        table = complete_quarantine(self)
        low, high = self.base, self.version
        since_rebuild = (pads.field(DATASET_VERSION) >= low) & (pads.field(DATASET_VERSION) <= high)
        with self.root.join(QUARANTINE).io("read"):
            scanner = table.to_pyarrow_dataset().scanner(filter=since_rebuild)
            return scanner.head(limit) if limit is not None else scanner.to_table()

    def state(self) -> dict[str, Any]:
        """The consumed source files and mergeable statistics this version ends with."""
        return self.root.join(STATE, self.manifest.state).read_json()


def version_number(version_id: str) -> int:
    """``"churn/v000003"`` (a :attr:`DatasetVersion.id`) -> 3."""
    return int(version_id.rsplit("v", 1)[-1])


def dataset_root(cfg: PipelineConfig) -> Location:
    return dataset_location(cfg.storage, cfg.dataset_name)


def dataset_location(storage: StorageConfig, name: str) -> Location:
    """Where the curated dataset ``name`` lives under a storage root."""
    return root_of(storage).join("curated", name)


def _commit_info(rows: Location, version: int) -> dict[str, Any]:
    """The commitInfo of one log entry, read from the log itself (delta-rs' history()
    numbers entries from the newest commit, whatever version the table was loaded at)."""
    entry = rows.join("_delta_log", f"{version:020d}.json").read_bytes()
    for line in entry.decode().splitlines():
        action = json.loads(line) if line.strip() else {}
        if "commitInfo" in action:
            return action["commitInfo"]
    return {}


def _ingest_commit(rows: Location, table: DeltaTable) -> tuple[int, Manifest] | None:
    """(version, manifest) of the newest ingest commit at or before the table's version."""
    at = table.version()
    for number in range(at, max(0, at - _HISTORY_SCAN), -1):
        info = _commit_info(rows, number)
        if MANIFEST_KEY in info:
            return number, Manifest.from_json(info[MANIFEST_KEY])
    return None


def load_version(cfg: PipelineConfig, version: int | None = None) -> DatasetVersion:
    """A committed version (the latest when ``version`` is None)."""
    root = dataset_root(cfg)
    rows = root.join(ROWS)
    latest = delta.open_table(rows)
    found = _ingest_commit(rows, latest) if latest is not None else None
    if latest is None or found is None:
        raise DataError(
            f"dataset {cfg.dataset_name!r} has no committed version under {root.uri}; "
            "run `rayops ingest CONFIG` first"
        )
    if version is not None and version != latest.version():
        if not 1 <= version <= latest.version():
            raise DataError(
                f"dataset {cfg.dataset_name!r} has no version {version}; "
                f"versions: 1 to {found[0]} (latest)"
            )
        at = delta.open_table(rows, version)
        found = _ingest_commit(rows, at) if at is not None else None
        if found is None:
            raise DataError(f"dataset {cfg.dataset_name!r} has no version {version}")
        if found[0] != version:
            logger.info(
                "version %d of %s is maintenance: its data is version %d's",
                version,
                rows.uri,
                found[0],
            )
    number, manifest = found
    return DatasetVersion(cfg.dataset_name, number, root, manifest)


def latest_version(cfg: PipelineConfig) -> DatasetVersion | None:
    return latest_at(dataset_root(cfg), cfg.dataset_name)


def latest_at(root: Location, name: str) -> DatasetVersion | None:
    """The latest version of the dataset ``name`` under ``root`` (None before the first
    ingest): for readers without the pipeline config, such as a replica."""
    table = delta.open_table(root.join(ROWS))
    found = _ingest_commit(root.join(ROWS), table) if table is not None else None
    return DatasetVersion(name, found[0], root, found[1]) if found is not None else None


def version_of(cfg: PipelineConfig, table: DeltaTable) -> DatasetVersion | None:
    """The dataset version a loaded rows table is at (None before the first ingest)."""
    found = _ingest_commit(dataset_root(cfg).join(ROWS), table)
    if found is None:
        return None
    return DatasetVersion(cfg.dataset_name, found[0], dataset_root(cfg), found[1])


def complete_quarantine(version: DatasetVersion, table: DeltaTable | None = None) -> DeltaTable:
    """Append the version's rejected rows to the quarantine table (``table``, opened here
    when None) unless that is done (exactly once: the append carries the version as its
    transaction id)."""
    location = version.root.join(QUARANTINE)
    table = table or delta.ensure_table(location, QUARANTINE_SCHEMA, [DATASET_VERSION])
    if (table.transaction_version(QUARANTINE_APP) or 0) >= version.version:
        return table
    actions = [
        delta.action_from_dict(a, {DATASET_VERSION: str(version.version)})
        for a in version.manifest.quarantine_files
    ]
    try:
        delta.commit(
            location,
            table,
            actions,
            mode="append",
            schema=QUARANTINE_SCHEMA,
            partition_by=[DATASET_VERSION],
            metadata={DATASET_TAG: str(version.version)},
            transaction=Transaction(QUARANTINE_APP, version.version),
        )
    except delta.CommitConflict:
        table.update_incremental()  # someone else completed it at the same moment
        if (table.transaction_version(QUARANTINE_APP) or 0) < version.version:
            raise
    return table
