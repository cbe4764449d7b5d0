"""Curating one batch of source items in a single streaming pass (Ray Data).

Each task reads whole files, validates every row against the schema contract, assigns it to
train, valid or quarantine, writes kept rows into the curated table's folder and rejected
rows into the quarantine table's, and returns the files it wrote (Delta add actions, not
yet committed) with a small summary: row counts by split and reason, unreadable and failed
files, and the mergeable statistics of the training rows. A task that Ray retries writes
new files and returns only those: the failed attempt's files are committed by no one.
Raw data never goes through the object store twice.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from ray.data.datasource import Datasink

from rayops.config import ColumnSpec, DataConfig
from rayops.data import stats
from rayops.data import table as delta
from rayops.data import validate as schema
from rayops.data.context import data_context
from rayops.data.series import off_grid
from rayops.data.sources import FAILED, UNREADABLE, Source
from rayops.errors import DataError
from rayops.storage import Location
from rayops.tasks.scoring import label_strings

SPLITS = ("train", "valid", "quarantine")
KEPT = ("train", "valid")


def used_columns(data: DataConfig) -> dict[str, ColumnSpec]:
    """The declared columns an ingest reads and keeps: features and label."""
    return {name: data.columns[name] for name in [*data.feature_names, data.label]}


# --------------------------------------------------------------------------- per block


def _output_schema(columns: Mapping[str, ColumnSpec]) -> pa.Schema:
    return pa.schema(
        [(n, schema.ARROW_TYPES[s.type]) for n, s in columns.items()]
        + [
            (schema.SOURCE_FILE, pa.string()),
            (schema.SOURCE_ROW, pa.int64()),
            (schema.RAW, pa.string()),
            (schema.ERROR, pa.string()),
            (schema.SPLIT, pa.string()),
        ]
    )


def _raw_json(raw: pa.Table, typed: pa.Table, columns: list[str]) -> pa.ChunkedArray:
    """RAW, filled for rejected rows that lack it with their original values as JSON."""
    existing = (
        typed.column(schema.RAW)
        if schema.RAW in typed.column_names
        else (pa.chunked_array([pa.nulls(typed.num_rows, pa.string())]))
    )
    missing = pc.and_(pc.is_valid(typed.column(schema.ERROR)), pc.is_null(existing))
    picked = np.flatnonzero(missing.to_numpy(zero_copy_only=False))
    present = [c for c in columns if c in raw.column_names]
    if not picked.size or not present:
        return existing
    values = existing.to_pylist()
    for i, row in zip(picked, raw.select(present).take(picked).to_pylist(), strict=True):
        values[i] = json.dumps(row, default=str)
    return pa.chunked_array([pa.array(values, pa.string())])


def validate_batch(raw: pa.Table, data: DataConfig) -> pa.Table:
    """Typed columns, provenance, ERROR and the split ('train', 'valid', 'quarantine')."""
    columns = used_columns(data)
    typed = schema.validate_table(raw, columns, data.label)
    error = typed.column(schema.ERROR)
    if data.null_strategy == "drop":
        for name in data.feature_names:
            dropped = pa.scalar(f"{name}: null dropped (null_strategy=drop)")
            nulls = pc.and_(pc.is_null(typed.column(name)), pc.is_null(error))
            error = pc.if_else(nulls, dropped, error)
    if data.forecast is not None:  # observations of series: held out by time later
        split = np.full(typed.num_rows, "train")
        error = _off_grid(typed, data, error)
    elif data.recommend is not None:  # interactions: each user's last held out later
        split = np.full(typed.num_rows, "train")
    else:
        split = schema.assign_split(typed, list(columns), data.valid_fraction, data.seed)
    split = np.where(pc.is_valid(error).to_numpy(zero_copy_only=False), "quarantine", split)
    typed = typed.set_column(typed.column_names.index(schema.ERROR), schema.ERROR, error)
    out = {n: typed.column(n) for n in columns}
    for name in (schema.SOURCE_FILE, schema.SOURCE_ROW):
        out[name] = typed.column(name) if name in typed.column_names else pa.nulls(typed.num_rows)
    out[schema.RAW] = _raw_json(raw, typed, list(columns))
    out[schema.ERROR] = error
    out[schema.SPLIT] = pa.array(split, pa.string())
    return pa.table(out).cast(_output_schema(columns))


def _off_grid(typed: pa.Table, data: DataConfig, error: pa.ChunkedArray) -> pa.ChunkedArray:
    """``error`` with a reason for each timestamp off the series' grid of steps."""
    f = data.forecast
    assert f is not None
    stamps = typed.column(f.timestamp)
    bad = pa.array(off_grid(stamps, f.step_s) & pc.is_valid(stamps).to_numpy(zero_copy_only=False))
    if not bad.true_count:
        return error
    shown = pc.strftime(stamps, format="%Y-%m-%dT%H:%M:%S")
    reason = pc.binary_join_element_wise(
        f"{f.timestamp}: not on the {f.frequency} grid of steps ('", shown, "')", ""
    )
    return pc.if_else(pc.and_(bad, pc.is_null(error)), reason, error)


def _is_failed(table: pa.Table) -> pa.ChunkedArray:
    """Rows that stand for a file that could not be fetched (not rows of the file)."""
    return pc.fill_null(pc.starts_with(table.column(schema.ERROR), FAILED), False)


def block_summary(table: pa.Table, data: DataConfig) -> dict[str, Any]:
    """Counts by split and reason, unreadable files and training statistics of one block."""
    failing = _is_failed(table)
    failed_rows = table.filter(failing)
    failed = [
        {"path": f, "reason": e}
        for f, e in zip(
            failed_rows.column(schema.SOURCE_FILE).to_pylist(),
            failed_rows.column(schema.ERROR).to_pylist(),
            strict=True,
        )
    ]
    table = table.filter(pc.invert(failing))
    split = table.column(schema.SPLIT)
    rejected = table.filter(pc.equal(split, "quarantine"))
    errors = rejected.column(schema.ERROR).to_pylist()
    files = rejected.column(schema.SOURCE_FILE).to_pylist()
    unreadable = [
        {"path": f, "reason": e}
        for f, e in zip(files, errors, strict=True)
        if e.startswith(UNREADABLE)
    ]
    train = table.filter(pc.equal(split, "train"))
    valid = table.filter(pc.equal(split, "valid"))
    labels = pc.value_counts(label_strings(valid.column(data.label))).to_pylist()
    return {
        "rows": {
            "train": train.num_rows,
            "valid": valid.num_rows,
            "quarantine": len(errors) - len(unreadable),
        },
        "reasons": dict(
            Counter(schema.error_kind(e) for e in errors if not e.startswith(UNREADABLE))
        ),
        "unreadable": unreadable,
        "failed": failed,
        "valid_labels": {v["values"]: v["counts"] for v in labels},
        "stats": stats.table_stats(train, used_columns(data), data.label, data.task),
    }


@dataclass(frozen=True)
class PartSummary:
    """What one ingest run read and where each row went."""

    files: int
    rows: dict[str, int]
    reasons: dict[str, int]
    unreadable: list[dict[str, str]]
    failed: list[dict[str, str]]
    valid_labels: dict[str, int]
    stats: dict[str, Any] = field(repr=False)

    @property
    def read(self) -> int:
        return self.rows["read"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "rows": self.rows,
            "reasons": self.reasons,
            "unreadable": self.unreadable,
            "failed": self.failed,
            "valid_labels": self.valid_labels,
        }


def merge_summaries(parts: Iterable[Mapping[str, Any]], files: int) -> PartSummary:
    """One :class:`PartSummary` from block summaries; checks the row accounting."""
    parts = list(parts)
    reasons: Counter[str] = Counter()
    labels: Counter[str] = Counter()
    for p in parts:
        reasons.update(p["reasons"])
        labels.update(p["valid_labels"])
    rows = {k: sum(p["rows"][k] for p in parts) for k in SPLITS}
    rows["read"] = sum(rows.values())
    if sum(reasons.values()) != rows["quarantine"]:
        raise DataError(f"row accounting does not add up: {rows} vs reasons {dict(reasons)}")
    return PartSummary(
        files,
        rows,
        dict(reasons.most_common()),
        [u for p in parts for u in p["unreadable"]],
        [f for p in parts for f in p["failed"]],
        dict(labels),
        stats.merge(p["stats"] for p in parts),
    )


def quarantine_rows(rejected: pa.Table) -> pa.Table:
    """Rejected rows as the quarantine table stores them (its partition column comes with
    the commit)."""
    return pa.table(
        {
            "source_file": rejected.column(schema.SOURCE_FILE),
            "line": rejected.column(schema.SOURCE_ROW),
            "reason": rejected.column(schema.ERROR),
            "raw": rejected.column(schema.RAW),
        }
    )


def write_block(
    table: pa.Table, rows: Location, quarantine: Location
) -> dict[str, list[dict[str, Any]]]:
    """The block's kept rows into the curated table's folder, its rejects into the
    quarantine table's; returns the uncommitted files (add actions as dicts)."""
    table = table.filter(pc.invert(_is_failed(table)))
    split = table.column(schema.SPLIT)
    written: dict[str, list[dict[str, Any]]] = {"rows": [], "quarantine": []}
    for name in KEPT:
        kept = table.filter(pc.equal(split, name))
        if kept.num_rows:
            kept = kept.drop_columns([schema.SPLIT, schema.RAW, schema.ERROR])
            written["rows"].append(
                delta.action_to_dict(delta.write_file(rows, kept, {schema.SPLIT: name}))
            )
    rejected = table.filter(pc.equal(split, "quarantine"))
    if rejected.num_rows:
        written["quarantine"].append(
            delta.action_to_dict(delta.write_file(quarantine, quarantine_rows(rejected)))
        )
    return written


@dataclass(frozen=True)
class PartResult:
    """What one curation pass wrote (uncommitted) and its summary."""

    summary: PartSummary
    rows_files: list[dict[str, Any]]
    quarantine_files: list[dict[str, Any]]


class PartSink(Datasink[list[dict[str, Any]]]):
    """Writes validated blocks' files and hands them, with summaries, back to the driver."""

    def __init__(self, rows: Location, quarantine: Location, data: DataConfig) -> None:
        self.rows, self.quarantine, self.data = rows, quarantine, data
        self.results: list[dict[str, Any]] = []

    def write(self, blocks: Iterable[Any], ctx: Any) -> list[dict[str, Any]]:
        out = []
        for block in blocks:
            table = block if isinstance(block, pa.Table) else pa.Table.from_pandas(block)
            out.append(
                {
                    "files": write_block(table, self.rows, self.quarantine),
                    "summary": block_summary(table, self.data),
                }
            )
        return out

    def on_write_complete(self, write_result: Any) -> None:
        self.results = [r for task in write_result.write_returns for r in task]


def rows_schema(data: DataConfig) -> pa.Schema:
    """The curated table's columns: the used columns typed, provenance, the split."""
    full = _output_schema(used_columns(data))
    return pa.schema([f for f in full if f.name not in (schema.RAW, schema.ERROR)])


def write_part(
    source: Source,
    items: list[dict[str, Any]],
    rows: Location,
    quarantine: Location,
    data: DataConfig,
) -> PartResult:
    """The single streaming pass over ``items``: read, validate, write, summarize."""
    with data_context():
        raw = source.read(items, list(used_columns(data)))
        validated = raw.map_batches(
            validate_batch,  # type: ignore[arg-type]
            batch_format="pyarrow",
            batch_size=None,
            fn_kwargs={"data": data},
        )
    sink = PartSink(rows, quarantine, data)
    validated.write_datasink(sink)
    return PartResult(
        merge_summaries([r["summary"] for r in sink.results], len(items)),
        [f for r in sink.results for f in r["files"]["rows"]],
        [f for r in sink.results for f in r["files"]["quarantine"]],
    )


def describe(summary: PartSummary, reasons: int | None = None) -> str:
    """The part's row accounting, its ``reasons`` most common quarantine reasons (all when
    None) and every unreadable file."""
    r = summary.rows
    lines = [
        f"files read: {summary.files - len(summary.failed)} of {summary.files} "
        f"({len(summary.unreadable)} unreadable, {len(summary.failed)} failed); rows "
        f"read: {r['read']} = kept {r['train'] + r['valid']} + quarantined "
        f"{r['quarantine']}"
    ]
    shown = list(summary.reasons.items())[:reasons]
    lines += [f"  quarantined {n}: {reason}" for reason, n in shown]
    if len(shown) < len(summary.reasons):
        lines.append(
            f"  ... {len(summary.reasons) - len(shown)} more reason(s): "
            "`rayops quarantine CONFIG` lists the rows"
        )
    lines += [f"  unreadable file {u['path']}: {u['reason']}" for u in summary.unreadable]
    lines += [
        f"  failed file {f['path']} (read again next time): {f['reason']}" for f in summary.failed
    ]
    return "\n".join(lines)
