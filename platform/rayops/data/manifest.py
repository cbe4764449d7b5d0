"""What a dataset version's commit records about itself: the manifest.

Each ingest's Delta commit carries one as commit metadata (``rayops.manifest``, JSON): the
row accounting since the last rebuild and of this ingest alone, the schema contract, the
preprocessing fitted on every training row, the profile drift is measured against, and the
state file the next incremental ingest starts from. Readers get these typed fields, never
string keys; the JSON keeps the same shape, so tables written earlier read back.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class RowCounts(_Record):
    """Where rows went: every row read is kept for training or validation, or quarantined."""

    read: int
    train: int
    valid: int
    quarantine: int
    valid_unseen_label: int = 0  # validation rows whose class never occurs in training

    @property
    def kept(self) -> int:
        return self.train + self.valid


class SourceRef(_Record):
    uri: str
    format: str


class IngestPart(_Record):
    """What this version's own ingest read (the manifest's other counts are totals)."""

    id: str
    files: int
    rows: RowCounts
    reasons: dict[str, int]
    unreadable: list[dict[str, str]]  # files that could not be parsed: path, reason
    failed: list[dict[str, str]]  # files that could not be fetched: read next time
    valid_labels: dict[str, int]
    lost_messages: int = 0  # a topic's messages that expired before they were read
    # a topic's partitions read: offsets start..end-1, lag_messages, lag_s (the oldest's age)
    partitions: list[dict[str, Any]] = []


class Manifest(_Record):
    """A dataset version's record (see the module's docstring)."""

    dataset: str
    created_at: str
    config_hash: str
    source: SourceRef
    base: int | None  # the version last rebuilt in; None: this one (or never rebuilt)
    rows: RowCounts
    valid_labels: dict[str, int]
    quarantine_reasons: dict[str, int]
    unreadable: list[dict[str, str]]
    columns: dict[str, dict[str, Any]] = Field(alias="schema")  # the contract, by column
    preprocessor: dict[str, Any]  # Preprocessor.to_dict()
    profile: dict[str, Any]  # per-column statistics of the training rows
    state: str  # the state file's name (consumed files, mergeable statistics)
    ingest: IngestPart
    quarantine_files: list[dict[str, Any]]  # the quarantine table's add actions

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True))

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        return cls.model_validate(json.loads(text))
