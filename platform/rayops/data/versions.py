"""Curated, versioned datasets: ``{root}/curated/{dataset}/v000001/{train,valid,quarantine}``.

A version becomes visible only when its ``manifest.json`` is written, last, after all data
files: readers list committed versions only, so a crash mid-write leaves nothing half-made
that anyone could read. The manifest holds the row accounting, the schema, the fitted
preprocessing state and a fingerprint of the inputs that produced it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from rayops.config import PipelineConfig
from rayops.data.preprocess import Preprocessor
from rayops.errors import DataError
from rayops.storage import Location, root_of

MANIFEST = "manifest.json"
_VERSION_RE = re.compile(r"^v(\d{6})$")


@dataclass(frozen=True)
class DatasetVersion:
    """A committed curated dataset version and its manifest."""

    name: str
    version: int
    location: Location
    manifest: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.name}/v{self.version:06d}"

    @property
    def preprocessor(self) -> Preprocessor:
        return Preprocessor.from_dict(self.manifest["preprocessor"])

    def split(self, name: str) -> Location:
        return self.location.join(name)


def dataset_root(cfg: PipelineConfig) -> Location:
    return root_of(cfg.storage).join("curated", cfg.dataset_name)


def version_dir(root: Location, version: int) -> Location:
    return root.join(f"v{version:06d}")


def _numbers(root: Location) -> list[int]:
    return sorted(int(m.group(1)) for n in root.list_dir() if (m := _VERSION_RE.match(n)))


def committed_versions(root: Location) -> list[int]:
    """Version numbers whose manifest exists, oldest first."""
    return [v for v in _numbers(root) if version_dir(root, v).join(MANIFEST).exists()]


def next_version(root: Location) -> int:
    """One past every version folder, committed or not, so a leftover is never reused."""
    numbers = _numbers(root)
    return (numbers[-1] + 1) if numbers else 1


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
    location = version_dir(root, chosen)
    return DatasetVersion(cfg.dataset_name, chosen, location, location.join(MANIFEST).read_json())


def find_by_fingerprint(cfg: PipelineConfig, fingerprint: str) -> DatasetVersion | None:
    """The latest committed version built from exactly these inputs, if any."""
    root = dataset_root(cfg)
    for number in reversed(committed_versions(root)):
        version = load_version(cfg, number)
        if version.manifest.get("fingerprint") == fingerprint:
            return version
    return None


def commit(location: Location, manifest: dict[str, Any]) -> None:
    """Make a fully written version visible by writing its manifest last."""
    location.join(MANIFEST).write_json(manifest)
