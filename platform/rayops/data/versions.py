"""Curated, versioned datasets, committed atomically.

Layout under ``{root}/curated/{dataset}/``::

    parts/{part-id}/rayops_split={train,valid,quarantine}/*.parquet   immutable data
    versions/v000001.json                                           the commit

An ingest writes its rows into a new part (the staging prefix), then commits a version by
writing its manifest: the parts it consists of (earlier versions' parts plus the new one),
the source items consumed, row accounting, schema, fitted preprocessing state and reference
profile. Readers only follow manifests, so a crash before the commit leaves nothing anyone
can see; the orphaned part is removed by the next successful ingest.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import ray.data

from rayops.config import PipelineConfig
from rayops.data.context import data_context
from rayops.data.preprocess import Preprocessor
from rayops.data.schema import SPLIT
from rayops.errors import DataError
from rayops.storage import Location, root_of

VERSIONS = "versions"
PARTS = "parts"
_VERSION_RE = re.compile(r"^v(\d{6})\.json$")


@dataclass(frozen=True)
class DatasetVersion:
    """A committed curated dataset version and its manifest."""

    name: str
    version: int
    root: Location
    manifest: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.name}/v{self.version:06d}"

    @property
    def uri(self) -> str:
        return self.root.join(VERSIONS, f"v{self.version:06d}.json").uri

    @property
    def preprocessor(self) -> Preprocessor:
        return Preprocessor.from_dict(self.manifest["preprocessor"])

    def split_locations(self, split: str) -> list[Location]:
        """Folders holding the split's rows, one per part that has any."""
        def has_rows(part: dict[str, Any]) -> bool:
            unreadable = split == "quarantine" and bool(part.get("unreadable"))
            return part["rows"].get(split, 0) > 0 or unreadable

        return [self.root.join(PARTS, part["id"], f"{SPLIT}={split}")
                for part in self.manifest["parts"] if has_rows(part)]

    def table(self, split: str, limit: int | None = None) -> pa.Table:
        """The split's rows read on this machine (for inspection; train with :meth:`read`)."""
        locations = self.split_locations(split)
        if not locations:
            return pa.table({})
        dataset = pads.dataset([pads.dataset(loc.path, filesystem=loc.fs, format="parquet")
                                for loc in locations])
        return dataset.head(limit) if limit is not None else dataset.to_table()

    def read(self, split: str) -> ray.data.Dataset:
        """The split's typed rows as a lazy Ray Dataset."""
        locations = self.split_locations(split)
        if not locations:
            raise DataError(f"dataset {self.id} has no {split!r} rows")
        return read_parquet(locations)


def read_parquet(locations: list[Location], columns: list[str] | None = None
                 ) -> ray.data.Dataset:
    """Ray Data's Parquet reader on curated folders (hive ``rayops_split=`` parsed)."""
    with data_context():
        return ray.data.read_parquet([loc.path for loc in locations],
                                     filesystem=locations[0].fs, columns=columns)


def version_number(version_id: str) -> int:
    """``"churn/v000003"`` (a :attr:`DatasetVersion.id`) -> 3."""
    return int(version_id.rsplit("v", 1)[-1])


def dataset_root(cfg: PipelineConfig) -> Location:
    return root_of(cfg.storage).join("curated", cfg.dataset_name)


def committed_versions(root: Location) -> list[int]:
    """Committed version numbers, oldest first."""
    names = root.join(VERSIONS).list_dir()
    return sorted(int(m.group(1)) for n in names if (m := _VERSION_RE.match(n)))


def _manifest_location(root: Location, version: int) -> Location:
    return root.join(VERSIONS, f"v{version:06d}.json")


def load_version(cfg: PipelineConfig, version: int | None = None) -> DatasetVersion:
    """A committed version (the latest when ``version`` is None)."""
    root = dataset_root(cfg)
    versions = committed_versions(root)
    if not versions:
        raise DataError(
            f"dataset {cfg.dataset_name!r} has no committed version under {root.uri}; "
            "run `rayops ingest CONFIG` first"
        )
    chosen = versions[-1] if version is None else version
    if chosen not in versions:
        raise DataError(
            f"dataset {cfg.dataset_name!r} has no committed version {chosen}; "
            f"committed: {versions}"
        )
    manifest = _manifest_location(root, chosen).read_json()
    return DatasetVersion(cfg.dataset_name, chosen, root, manifest)


def latest_version(cfg: PipelineConfig) -> DatasetVersion | None:
    return load_version(cfg) if committed_versions(dataset_root(cfg)) else None


def new_part(root: Location) -> tuple[str, Location]:
    """A fresh staging prefix for an ingest's rows."""
    part_id = uuid.uuid4().hex[:16]
    return part_id, root.join(PARTS, part_id)


def commit(root: Location, manifest: dict[str, Any]) -> int:
    """Make a fully written version visible by writing its manifest; returns its number."""
    versions = committed_versions(root)
    number = (versions[-1] + 1) if versions else 1
    target = _manifest_location(root, number)
    if target.exists():  # another ingest committed in between
        raise DataError(f"version {number} of {root.uri} appeared during this ingest; retry")
    target.write_json({**manifest, "version": number})
    return number


def remove_orphan_parts(root: Location) -> list[str]:
    """Delete parts no committed version refers to (left by failed or crashed ingests)."""
    used: set[str] = set()
    for number in committed_versions(root):
        used |= {p["id"] for p in _manifest_location(root, number).read_json()["parts"]}
    orphans = [p for p in root.join(PARTS).list_dir() if p not in used]
    for part_id in orphans:
        root.join(PARTS, part_id).delete_dir()
    return orphans
