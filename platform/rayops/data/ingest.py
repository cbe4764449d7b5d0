"""Raw source items -> validated, split, curated rows -> a committed dataset version.

One streaming Ray Data pass reads new source items, validates every row against the schema
contract and writes train/valid/quarantine rows into a new part; a second, columnar pass over
that part counts rows and gathers statistics. Then the version is committed. For every run:
rows read = rows kept (train + valid) + rows quarantined, checked and recorded.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayops.config import ColumnSpec, DataConfig, PipelineConfig
from rayops.data import schema, stats
from rayops.data.preprocess import Preprocessor, fit
from rayops.data.sources import UNREADABLE, FileSource, Source
from rayops.data.versions import (
    DatasetVersion,
    commit,
    dataset_root,
    latest_version,
    load_version,
    new_part,
    remove_orphan_parts,
)
from rayops.errors import DataError
from rayops.storage import Location, ensure_bucket, resolve_under, root_of

logger = logging.getLogger(__name__)


def used_columns(data: DataConfig) -> dict[str, ColumnSpec]:
    """The declared columns an ingest reads and keeps: features and label."""
    return {name: data.columns[name] for name in [*data.feature_names, data.label]}


def file_source(cfg: PipelineConfig) -> FileSource:
    location = resolve_under(root_of(cfg.storage), cfg.data.source, cfg.storage)
    return FileSource(location, cfg.data.format)


# --------------------------------------------------------------------------- per block


def _output_schema(columns: Mapping[str, ColumnSpec]) -> pa.Schema:
    return pa.schema(
        [(n, schema.ARROW_TYPES[s.type]) for n, s in columns.items()]
        + [(schema.SOURCE_FILE, pa.string()), (schema.SOURCE_ROW, pa.int64()),
           (schema.RAW, pa.string()), (schema.ERROR, pa.string()), (schema.SPLIT, pa.string())]
    )


def _raw_json(raw: pa.Table, typed: pa.Table, columns: list[str]) -> pa.ChunkedArray:
    """RAW, filled for rejected rows that lack it with their original values as JSON."""
    existing = typed.column(schema.RAW) if schema.RAW in typed.column_names else (
        pa.chunked_array([pa.nulls(typed.num_rows, pa.string())]))
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
    split = schema.assign_split(typed, list(columns), data.valid_fraction, data.seed)
    split = np.where(pc.is_valid(error).to_numpy(zero_copy_only=False), "quarantine", split)
    typed = typed.set_column(typed.column_names.index(schema.ERROR), schema.ERROR, error)
    out = {n: typed.column(n) for n in columns}
    for name in (schema.SOURCE_FILE, schema.SOURCE_ROW):
        out[name] = typed.column(name) if name in typed.column_names else pa.nulls(
            typed.num_rows)
    out[schema.RAW] = _raw_json(raw, typed, list(columns))
    out[schema.ERROR] = error
    out[schema.SPLIT] = pa.array(split, pa.string())
    return pa.table(out).cast(_output_schema(columns))


def part_stats_batch(table: pa.Table, data: DataConfig) -> dict[str, np.ndarray]:
    """One JSON row per block of a written part: counts by split and reason, train stats."""
    split = table.column(schema.SPLIT)
    errors = table.filter(pc.equal(split, "quarantine")).column(schema.ERROR).to_pylist()
    unreadable = [(f, e) for f, e in zip(
        table.filter(pc.equal(split, "quarantine")).column(schema.SOURCE_FILE).to_pylist(),
        errors, strict=True) if e.startswith(UNREADABLE)]
    train = table.filter(pc.equal(split, "train"))
    valid_labels = pc.value_counts(pc.cast(
        table.filter(pc.equal(split, "valid")).column(data.label), pa.string())).to_pylist()
    summary = {
        "train": train.num_rows,
        "valid": int(pc.sum(pc.equal(split, "valid")).as_py() or 0),
        "quarantine": len(errors) - len(unreadable),
        "reasons": dict(Counter(schema.error_kind(e) for e in errors
                                if not e.startswith(UNREADABLE))),
        "unreadable": [{"path": f, "reason": e} for f, e in unreadable],
        "valid_labels": {v["values"]: v["counts"] for v in valid_labels},
        "stats": stats.table_stats(train, used_columns(data), data.label, data.task),
    }
    return {"summary": np.array([json.dumps(summary)])}


# --------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class PartSummary:
    """What one ingest run read and where each row went."""

    files: int
    rows: dict[str, int]
    reasons: dict[str, int]
    unreadable: list[dict[str, str]]
    valid_labels: dict[str, int]
    stats: dict[str, Any] = field(repr=False)

    @property
    def read(self) -> int:
        return self.rows["read"]

    def as_dict(self) -> dict[str, Any]:
        return {"files": self.files, "rows": self.rows, "reasons": self.reasons,
                "unreadable": self.unreadable, "valid_labels": self.valid_labels,
                "stats": self.stats}


def summarize_part(location: Location, data: DataConfig, files: int) -> PartSummary:
    import ray.data

    if not location.list_files():  # nothing written: every item was empty
        rows = {"read": 0, "train": 0, "valid": 0, "quarantine": 0}
        return PartSummary(files, rows, {}, [], {}, {})
    parts = [json.loads(s) for s in ray.data.read_parquet(
        location.path, filesystem=location.fs
    ).map_batches(part_stats_batch, batch_format="pyarrow", fn_kwargs={"data": data}
                  ).to_pandas()["summary"]]
    reasons: Counter[str] = Counter()
    labels: Counter[str] = Counter()
    for p in parts:
        reasons.update(p["reasons"])
        labels.update(p["valid_labels"])
    rows = {k: sum(p[k] for p in parts) for k in ("train", "valid", "quarantine")}
    rows["read"] = rows["train"] + rows["valid"] + rows["quarantine"]
    if sum(reasons.values()) != rows["quarantine"]:
        raise DataError(f"row accounting does not add up: {rows} vs reasons {dict(reasons)}")
    unreadable = [u for p in parts for u in p["unreadable"]]
    return PartSummary(files, rows, dict(reasons.most_common()), unreadable, dict(labels),
                       stats.merge(p["stats"] for p in parts))


def describe(summary: PartSummary) -> str:
    r = summary.rows
    lines = [f"files read: {summary.files} ({len(summary.unreadable)} unreadable)",
             f"rows read: {r['read']} = kept {r['train'] + r['valid']} (train {r['train']}, "
             f"valid {r['valid']}) + quarantined {r['quarantine']}"]
    lines += [f"  quarantined {n}: {reason}" for reason, n in summary.reasons.items()]
    lines += [f"  unreadable file {u['path']}: {u['reason']}" for u in summary.unreadable]
    return "\n".join(lines)


# --------------------------------------------------------------------------- planning


def config_hash(data: DataConfig) -> str:
    return hashlib.sha256(json.dumps(data.model_dump(mode="json"), sort_keys=True).encode()
                          ).hexdigest()[:16]


def plan(previous: DatasetVersion | None, items: list[dict[str, Any]], data_hash: str
         ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(items to read, earlier parts to keep). Only new items are read when nothing that
    was consumed changed; otherwise everything is rebuilt."""
    if previous is None or previous.manifest.get("config_hash") != data_hash:
        return items, []
    consumed = {i["key"]: i for part in previous.manifest["parts"] for i in part["items"]}
    current = {i["key"]: i for i in items}
    changed = [k for k, old in consumed.items() if current.get(k) != old]
    if changed:
        logger.warning("%d consumed item(s) changed or vanished (e.g. %s): rebuilding",
                       len(changed), changed[0])
        return items, []
    return [i for k, i in current.items() if k not in consumed], list(previous.manifest["parts"])


# --------------------------------------------------------------------------- ingest


def _manifest(cfg: PipelineConfig, source: Source, parts: list[dict[str, Any]],
              data_hash: str) -> dict[str, Any]:
    merged = stats.merge(p["stats"] for p in parts)
    pre: Preprocessor = fit(merged, cfg.data)
    labels: Counter[str] = Counter()
    for p in parts:
        labels.update(p["valid_labels"])
    unseen = sum(n for k, n in labels.items() if k not in pre.classes) if pre.classes else 0
    rows = {k: sum(p["rows"][k] for p in parts) for k in ("read", "train", "valid", "quarantine")}
    rows["valid_unseen_label"] = unseen
    return {
        "dataset": cfg.dataset_name,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "config_hash": data_hash,
        "source": {"uri": source.uri, "format": cfg.data.format},
        "parts": parts,
        "rows": rows,
        "quarantine_reasons": dict(sum((Counter(p["reasons"]) for p in parts), Counter())),
        "unreadable": [u for p in parts for u in p["unreadable"]],
        "schema": {n: s.model_dump() for n, s in used_columns(cfg.data).items()},
        "preprocessor": pre.to_dict(),
        "profile": stats.profile(merged),
    }


def _write_part(cfg: PipelineConfig, source: Source, items: list[dict[str, Any]],
                location: Location) -> PartSummary:
    raw = source.read(items, list(used_columns(cfg.data)))
    validated = raw.map_batches(validate_batch, batch_format="pyarrow",
                                fn_kwargs={"data": cfg.data})
    validated.write_parquet(location.path, filesystem=location.fs,
                            partition_cols=[schema.SPLIT])
    return summarize_part(location, cfg.data, len(items))


def _check_threshold(summary: PartSummary, data: DataConfig) -> None:
    bad = summary.rows["quarantine"]
    if summary.read and bad / summary.read > data.max_quarantine_fraction:
        raise DataError(
            f"{bad} of {summary.read} rows ({bad / summary.read:.1%}) broke the schema, above "
            f"data.max_quarantine_fraction={data.max_quarantine_fraction}; nothing was "
            f"committed. Top reasons: {dict(list(summary.reasons.items())[:5])}"
        )


def ingest(cfg: PipelineConfig, source: Source | None = None) -> DatasetVersion:
    """Process what is new in the source into a new committed version (or reuse the
    latest when nothing is new)."""
    root = dataset_root(cfg)
    ensure_bucket(root_of(cfg.storage))
    source = source or file_source(cfg)
    items = source.snapshot()
    previous = latest_version(cfg)
    data_hash = config_hash(cfg.data)
    todo, kept_parts = plan(previous, items, data_hash)
    if previous is not None and not todo and kept_parts:
        logger.info("Nothing new at %s: dataset %s is current", source.uri, previous.id)
        return previous

    part_id, location = new_part(root)
    logger.info("Ingesting %d new item(s) from %s into part %s", len(todo), source.uri, part_id)
    summary = _write_part(cfg, source, todo, location)
    logger.info("Ingest summary:\n%s", describe(summary))
    try:
        _check_threshold(summary, cfg.data)
        part = {"id": part_id, "items": todo, **summary.as_dict()}
        manifest = _manifest(cfg, source, [*kept_parts, part], data_hash)
    except DataError:
        location.delete_dir()
        raise
    number = commit(root, manifest)
    version = load_version(cfg, number)
    removed = remove_orphan_parts(root)
    if removed:
        logger.info("Removed %d orphaned part(s) of failed ingests", len(removed))
    logger.info("Committed %s: %s", version.id, version.manifest["rows"])
    _track(cfg, version, summary)
    return version


def _track(cfg: PipelineConfig, version: DatasetVersion, summary: PartSummary) -> None:
    """Log the run's summary to MLflow (source and dataset ids only: never credentials)."""
    from rayops import tracking

    metrics: dict[str, float] = {
        "files_read": summary.files, "files_unreadable": len(summary.unreadable),
        "rows_read": summary.rows["read"], "rows_train": summary.rows["train"],
        "rows_valid": summary.rows["valid"], "rows_quarantined": summary.rows["quarantine"],
    }
    for reason, count in summary.reasons.items():
        metrics[tracking.metric_name(f"quarantined.{reason}")] = count
    run_id = tracking.start_run(
        cfg.tracking, cfg.experiment_name, f"{cfg.name}-ingest",
        params={"dataset_version": version.id, "source": version.manifest["source"]["uri"],
                "format": cfg.data.format},
        tags={"rayops.kind": "ingest", "rayops.dataset_version": version.id},
    )
    tracking.log_metrics(cfg.tracking, run_id, metrics, step=version.version)
    tracking.log_dict(cfg.tracking, run_id, version.manifest["rows"] | {
        "quarantine_reasons": summary.reasons, "unreadable": summary.unreadable},
        "ingest_summary.json")
    tracking.end_run(cfg.tracking, run_id)


def watch(cfg: PipelineConfig, interval_s: float, polls: int | None = None,
          on_version: Callable[[DatasetVersion], None] | None = None) -> None:
    """Poll the source and ingest each arrival (``polls`` bounds the loop for tests)."""
    seen: int | None = None
    count = 0
    while polls is None or count < polls:
        version = ingest(cfg)
        if version.version != seen:
            seen = version.version
            if on_version:
                on_version(version)
        count += 1
        if polls is None or count < polls:
            time.sleep(interval_s)
