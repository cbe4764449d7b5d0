"""Raw files -> validated -> split -> fitted transform -> curated, versioned Parquet (Ray Data).

Row accounting holds for every run: rows read = rows kept (train + valid) + rows quarantined.
Quarantined rows are written with their source file and reason, never dropped silently.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import ray.data

from rayops.config import DataConfig, PipelineConfig
from rayops.data import preprocess, schema
from rayops.data.versions import (
    DatasetVersion,
    commit,
    dataset_root,
    find_by_fingerprint,
    next_version,
    version_dir,
)
from rayops.errors import DataError
from rayops.storage import Location, ensure_bucket, resolve_under, root_of

logger = logging.getLogger(__name__)

EXTENSIONS = {
    "csv": (".csv", ".csv.gz", ".tsv"),
    "json": (".json", ".jsonl", ".ndjson", ".json.gz", ".jsonl.gz"),
    "parquet": (".parquet", ".pq"),
}


def source_location(cfg: PipelineConfig) -> Location:
    return resolve_under(root_of(cfg.storage), cfg.data.source, cfg.storage.endpoint_url,
                         cfg.storage.region)


def list_source_files(source: Location, fmt: str) -> list[dict[str, Any]]:
    """The raw files to read, with size and modification time for the fingerprint."""
    files = [
        {"path": info.path, "size": info.size,
         "mtime": info.mtime.isoformat() if info.mtime else None}
        for info in source.list_files()
        if info.path.lower().endswith(EXTENSIONS[fmt])
        and not any(part.startswith((".", "_")) for part in info.path.split("/")[-1:])
    ]
    if not files:
        raise DataError(
            f"no {fmt} files ({', '.join(EXTENSIONS[fmt])}) under {source.uri}; check "
            "data.source and data.format"
        )
    return files


def _skip_invalid_row(row: Any) -> str:
    # A line with the wrong number of fields cannot be attributed to columns: skip it.
    return "skip"


def read_raw(files: list[str], source: Location, data: DataConfig) -> ray.data.Dataset:
    """A lazy Ray Dataset of the raw files; CSV columns arrive as text for our own casting."""
    common = {"filesystem": source.fs, "include_paths": True}
    if data.format == "csv":
        return ray.data.read_csv(
            files,
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in data.columns}
            ),
            parse_options=pacsv.ParseOptions(invalid_row_handler=_skip_invalid_row),
            **common,
        )
    if data.format == "json":
        return ray.data.read_json(files, **common)
    return ray.data.read_parquet(files, **common)


def _used_columns(data: DataConfig) -> dict[str, Any]:
    return {name: data.columns[name] for name in [*data.feature_names, data.label]}


def validate_batch(frame: pd.DataFrame, data: DataConfig) -> pd.DataFrame:
    """Typed columns, the error column and the split column for one raw batch."""
    out = schema.validate_frame(frame, _used_columns(data), data.label)
    if data.null_strategy == "drop":
        for name in data.feature_names:
            nulls = out[name].isna() & out[schema.ERROR_COLUMN].isna()
            out.loc[nulls, schema.ERROR_COLUMN] = f"{name}: null dropped (null_strategy=drop)"
    out[schema.SPLIT_COLUMN] = schema.assign_split(
        out, [*data.feature_names, data.label], data.valid_fraction, data.seed
    )
    return out


def stats_batch(frame: pd.DataFrame, data: DataConfig) -> dict[str, np.ndarray]:
    """One row per batch: row counts by split and error, and training statistics."""
    good = frame[schema.ERROR_COLUMN].isna()
    train = good & (frame[schema.SPLIT_COLUMN] == "train")
    valid_labels = preprocess.label_strings(frame.loc[good & ~train, data.label])
    summary = {
        "rows": len(frame),
        "train": int(train.sum()),
        "valid": int((good & ~train).sum()),
        "errors": dict(Counter(map(schema.error_kind, frame.loc[~good, schema.ERROR_COLUMN]))),
        "valid_labels": {str(k): int(v) for k, v in valid_labels.value_counts().items()},
        "fit": preprocess.batch_stats(frame.loc[train], data),
    }
    return {"summary": np.array([json.dumps(summary)])}


def select_rows(frame: pd.DataFrame, split: str) -> pd.DataFrame:
    good = frame[schema.ERROR_COLUMN].isna()
    if split == "quarantine":
        return frame.loc[~good].drop(columns=[schema.SPLIT_COLUMN])
    return frame.loc[good & (frame[schema.SPLIT_COLUMN] == split)]


def transform_batch(frame: pd.DataFrame, state: dict[str, Any], split: str) -> dict[str, Any]:
    """The model-ready rows of one split: a ``features`` matrix and an encoded ``label``."""
    pre = preprocess.Preprocessor.from_dict(state)
    rows = select_rows(frame, split)
    label = pre.encode_label(rows[pre.label])
    keep = label >= 0 if pre.task == "classification" else np.ones(len(rows), dtype=bool)
    return {"features": pre.transform(rows.loc[keep]), "label": label[keep]}


def fingerprint(files: list[dict[str, Any]], data: DataConfig) -> str:
    """Hash of the input files (path, size, mtime) and the data config."""
    payload = json.dumps({"files": files, "data": data.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _summarize(parts: list[dict[str, Any]]) -> dict[str, Any]:
    errors: Counter[str] = Counter()
    valid_labels: Counter[str] = Counter()
    for part in parts:
        errors.update(part["errors"])
        valid_labels.update(part["valid_labels"])
    return {
        "read": sum(p["rows"] for p in parts),
        "train": sum(p["train"] for p in parts),
        "valid": sum(p["valid"] for p in parts),
        "quarantined": sum(errors.values()),
        "errors": dict(errors.most_common()),
        "valid_labels": dict(valid_labels),
        "fit": preprocess.merge_stats(p["fit"] for p in parts),
    }


def _write(validated: ray.data.Dataset, fn: Any, target: Location, **kwargs: Any) -> None:
    part = validated.map_batches(fn, batch_format="pandas", fn_kwargs=kwargs)
    part.write_parquet(target.path, filesystem=target.fs)


def ingest(cfg: PipelineConfig) -> DatasetVersion:
    """Build (or reuse) the curated dataset version for the config's raw source."""
    ensure_bucket(root_of(cfg.storage))
    source = source_location(cfg)
    files = list_source_files(source, cfg.data.format)
    print_ = fingerprint(files, cfg.data)
    existing = find_by_fingerprint(cfg, print_)
    if existing is not None:
        logger.info("Inputs unchanged: reusing dataset version %s", existing.id)
        return existing

    logger.info("Reading %d %s file(s) from %s", len(files), cfg.data.format, source.uri)
    raw = read_raw([f["path"] for f in files], source, cfg.data)
    validated = raw.map_batches(
        validate_batch, batch_format="pandas", fn_kwargs={"data": cfg.data}
    ).materialize()
    parts = [json.loads(s) for s in validated.map_batches(
        stats_batch, batch_format="pandas", fn_kwargs={"data": cfg.data}
    ).to_pandas()["summary"]]
    summary = _summarize(parts)
    pre = preprocess.fit(summary["fit"], cfg.data)
    unseen = sum(n for label, n in summary["valid_labels"].items() if label not in pre.classes)
    if cfg.data.task == "classification" and unseen:
        logger.warning("%d validation row(s) have a class unseen in training; left out", unseen)
    if summary["train"] == 0 or summary["valid"] - unseen <= 0:
        raise DataError(
            f"not enough valid rows: {summary['train']} train, {summary['valid']} validation "
            f"of {summary['read']} read; quarantine reasons: {summary['errors']}"
        )

    root = dataset_root(cfg)
    target = version_dir(root, next_version(root))
    state = pre.to_dict()
    for split in ("train", "valid"):
        _write(validated, transform_batch, target.join(split), state=state, split=split)
    if summary["quarantined"]:
        _write(validated, select_rows, target.join("quarantine"), split="quarantine")

    rows = {"read": summary["read"], "train": summary["train"],
            "valid": summary["valid"] - unseen, "quarantined": summary["quarantined"],
            "valid_unseen_label": unseen}
    if rows["read"] != rows["train"] + summary["valid"] + rows["quarantined"]:
        raise DataError(f"row accounting does not add up: {rows}")
    manifest = {
        "dataset": cfg.dataset_name,
        "version": int(target.path.rsplit("v", 1)[-1]),
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "fingerprint": print_,
        "source": {"uri": source.uri, "format": cfg.data.format, "files": files},
        "rows": rows,
        "quarantine_reasons": summary["errors"],
        "schema": {name: spec.model_dump() for name, spec in _used_columns(cfg.data).items()},
        "preprocessor": state,
    }
    commit(target, manifest)
    version = DatasetVersion(cfg.dataset_name, manifest["version"], target, manifest)
    logger.info("Committed dataset %s: %s", version.id, rows)
    return version
