"""Raw source items -> a committed, curated dataset version.

Plans what is new in the source, curates it into a new part in one streaming pass
(:mod:`rayops.data.curate`), checks the bad-row threshold, and commits a version whose
manifest merges the new part with the earlier ones. For every run:
rows read = rows kept (train + valid) + rows quarantined, checked and recorded.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from rayops.config import DataConfig, PipelineConfig
from rayops.data import stats
from rayops.data.curate import PartSummary, describe, used_columns, write_part
from rayops.data.preprocess import Preprocessor, fit
from rayops.data.sources import FileSource, Source
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


def file_source(cfg: PipelineConfig) -> FileSource:
    location = resolve_under(root_of(cfg.storage), cfg.data.source, cfg.storage)
    return FileSource(location, cfg.data.format)


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
        "content_hash": _content_hash(parts),
        "source": {"uri": source.uri, "format": cfg.data.format},
        "parts": parts,
        "rows": rows,
        "quarantine_reasons": dict(sum((Counter(p["reasons"]) for p in parts), Counter())),
        "unreadable": [u for p in parts for u in p["unreadable"]],
        "schema": {n: s.model_dump() for n, s in used_columns(cfg.data).items()},
        "preprocessor": pre.to_dict(),
        "profile": stats.profile(merged),
    }


def _data_files(location: Location) -> dict[str, int]:
    """The part's Parquet files (relative path -> bytes), as written."""
    prefix = location.path.rstrip("/") + "/"
    return {info.path.removeprefix(prefix): int(info.size) for info in location.list_files()}


def _content_hash(parts: list[dict[str, Any]]) -> str:
    """Changes whenever any data file of the version differs in name or size."""
    listing = sorted((p["id"], name, size) for p in parts for name, size in
                     p.get("data_files", {}).items())
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


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
    from rayops import tracking

    root = dataset_root(cfg)
    ensure_bucket(root_of(cfg.storage))
    tracking.require_reachable(cfg.tracking)  # before anything is committed
    source = source or file_source(cfg)
    items = source.snapshot()
    previous = latest_version(cfg)
    data_hash = config_hash(cfg.data)
    todo, kept_parts = plan(previous, items, data_hash)
    if previous is not None and not todo and kept_parts:
        logger.info("nothing new at %s: dataset %s is current", source.uri, previous.id)
        _track(cfg, previous)  # in case logging failed after the commit
        return previous

    part_id, location = new_part(root)
    logger.info("ingesting %d new file(s) from %s", len(todo), source.uri)
    summary = write_part(source, todo, location, cfg.data)
    logger.info("%s", describe(summary, reasons=3))
    try:
        _check_threshold(summary, cfg.data)
        part = {"id": part_id, "items": todo, "data_files": _data_files(location),
                **summary.as_dict()}
        manifest = _manifest(cfg, source, [*kept_parts, part], data_hash)
    except DataError:
        location.delete_dir()
        raise
    number = commit(root, manifest)
    version = load_version(cfg, number)
    removed = remove_orphan_parts(root)
    if removed:
        logger.info("Removed %d orphaned part(s) of failed ingests", len(removed))
    rows = version.manifest["rows"]
    logger.info("committed %s: %d train + %d valid rows", version.id, rows["train"],
                rows["valid"])
    _track(cfg, version)
    return version


def _track(cfg: PipelineConfig, version: DatasetVersion) -> None:
    """Log the ingest that made ``version`` (its newest part) to MLflow, once: source and
    dataset ids only, never credentials."""
    from rayops import tracking

    if tracking.runs_tagged(cfg.tracking, cfg.experiment_name, {
            "rayops.kind": "ingest", "rayops.dataset_version": version.id}):
        return
    part = version.manifest["parts"][-1]
    rows, reasons = part["rows"], part["reasons"]
    metrics: dict[str, float] = {
        "files_read": part["files"], "files_unreadable": len(part["unreadable"]),
        "rows_read": rows["read"], "rows_train": rows["train"], "rows_valid": rows["valid"],
        "rows_quarantined": rows["quarantine"],
    }
    for reason, count in reasons.items():
        metrics[tracking.metric_name(f"quarantined.{reason}")] = count
    run_id = tracking.start_run(
        cfg.tracking, cfg.experiment_name, f"{cfg.name}-ingest",
        params={"dataset_version": version.id, "source": version.manifest["source"]["uri"],
                "format": cfg.data.format},
        tags={"rayops.kind": "ingest", "rayops.dataset_version": version.id},
    )
    tracking.log_metrics(cfg.tracking, run_id, metrics, step=version.version)
    tracking.log_dict(cfg.tracking, run_id, version.manifest["rows"] | {
        "quarantine_reasons": reasons, "unreadable": part["unreadable"]},
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
