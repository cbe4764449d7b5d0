"""Raw source items -> a committed, curated dataset version (a Delta table version).

Plans what is new in the source against the latest version's consumed files, curates it in
one streaming pass (:mod:`rayops.data.curate`: files written, nothing visible), checks the
bad-row and failed-file thresholds, writes the next state file, and commits: one new
version of the curated table whose metadata is the version's manifest. For every run:
rows read = rows kept (train + valid) + rows quarantined, checked and recorded; files that
could not be fetched are reported as failed and are read again by the next ingest.

The work of one ingest does not grow with the dataset's history: it opens the table (one
checkpoint and at most nine log entries), reads the latest manifest and one state file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from deltalake import Transaction

from rayops.config import DataConfig, PipelineConfig
from rayops.data import stats
from rayops.data import table as delta
from rayops.data.curate import PartSummary, describe, rows_schema, used_columns, write_part
from rayops.data.kafka import SCHEME as KAFKA
from rayops.data.kafka import KafkaSource
from rayops.data.kinesis import SCHEME as KINESIS
from rayops.data.kinesis import KinesisSource
from rayops.data.manifest import Manifest
from rayops.data.messages import AvroDecoder, MessageSource, SourceUnavailable, export_lag
from rayops.data.observations import (
    fit_interactions,
    fit_series,
    observations,
    read_attributes,
    settled,
)
from rayops.data.preprocess import Preprocessor, fit
from rayops.data.sources import FileSource, Source
from rayops.data.validate import SPLIT
from rayops.data.versions import (
    MANIFEST_KEY,
    QUARANTINE,
    ROWS,
    STATE,
    DatasetVersion,
    complete_quarantine,
    dataset_root,
    version_number,
    version_of,
)
from rayops.errors import DataError, RayopsError
from rayops.storage import ensure_bucket, resolve_under, root_of

logger = logging.getLogger(__name__)
VACUUM_EVERY = 10  # versions between two clean-ups of unreferenced files


class FilesFailed(DataError):
    """Source files could not be fetched; nothing was committed, they are read next time."""


def file_source(cfg: PipelineConfig) -> FileSource:
    location = resolve_under(root_of(cfg.storage), cfg.data.source, cfg.storage)
    return FileSource(location, cfg.data.format)


def source_of(cfg: PipelineConfig) -> Source:
    """What ``data.source`` names: a Kafka topic (``kafka://``), a Kinesis stream
    (``kinesis://``) or files."""
    log = {KAFKA: KafkaSource, KINESIS: KinesisSource}
    for scheme, kind in log.items():
        if cfg.data.source.startswith(scheme):
            source = kind.parse(cfg.data.source, cfg.data.format, list(cfg.data.columns))  # type: ignore[attr-defined]
            return source.with_avro(avro_decoder(cfg)) if cfg.data.avro else source
    return file_source(cfg)  # type: ignore[return-value]


def avro_decoder(cfg: PipelineConfig) -> AvroDecoder:
    """The decoder of ``data.avro``: its schema read from the store and parsed."""
    assert cfg.data.avro is not None
    location = resolve_under(root_of(cfg.storage), cfg.data.avro.schema_path, cfg.storage)
    return AvroDecoder.parse(
        location.read_bytes(), cfg.data.avro.framing, f"data.avro.schema ({location.uri})"
    )


# --------------------------------------------------------------------------- planning


# Settings that say how to ingest, not what the curated rows are: changing them rebuilds
# nothing (and a setting added later leaves existing datasets' hash as it was).
_NOT_HASHED = {"vanished_files", "max_lost_messages", "watch_interval_s"}
_HASHED_WHEN_SET = ("avro",)  # added later: unset, a dataset's hash is as it was


def attribute_tables(cfg: PipelineConfig) -> dict[str, Any]:
    """The recommender's attribute tables (``data.recommend.items``, ``users``) given."""
    r = cfg.data.recommend
    if r is None:
        return {}
    return {
        key: read_attributes(
            table, resolve_under(root_of(cfg.storage), table.source, cfg.storage), column
        )
        for key, table, column in (("items", r.items, r.item), ("users", r.users, r.user))
        if table is not None
    }


def config_hash(data: DataConfig) -> str:
    described = data.model_dump(mode="json", exclude=_NOT_HASHED)
    for key in _HASHED_WHEN_SET:
        if described.get(key) is None:
            described.pop(key, None)
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


class SourceFilesVanished(DataError):
    """Files an earlier version consumed are gone from the source; nothing was committed."""


def plan(
    previous: DatasetVersion | None,
    consumed: dict[str, dict[str, Any]],
    items: list[dict[str, Any]],
    data_hash: str,
    vanished_files: str = "fail",
) -> tuple[list[dict[str, Any]], bool]:
    """(items to read, whether the dataset is rebuilt). Only new items are read when
    nothing that was consumed changed and the data config is the same. Consumed items that
    are gone follow ``data.vanished_files``: never silently dropped."""
    current = {i["key"]: i for i in items}
    if previous is None:
        return items, True
    gone = sorted(k for k in consumed if k not in current)
    rebuild = previous.manifest.config_hash != data_hash
    changed = [k for k, old in consumed.items() if k in current and current[k] != old]
    if gone and (vanished_files == "fail" or (vanished_files == "keep" and (rebuild or changed))):
        why = (
            "a rebuild ("
            + ("the data config changed" if rebuild else f"{changed[0]} changed")
            + ") would lose their rows; "
            if vanished_files == "keep"
            else ""
        )
        raise SourceFilesVanished(
            f"{len(gone)} source file(s) that {previous.id} consumed are gone from the "
            f"source (e.g. {gone[0]}): {why}nothing was committed. Restore them, or set "
            "data.vanished_files: keep (their rows stay: raw files that expire on purpose) "
            "or drop (rebuild without their rows)"
        )
    if gone and vanished_files == "drop":
        logger.warning(
            "%d consumed file(s) are gone (e.g. %s): rebuilding without their "
            "rows (data.vanished_files: drop)",
            len(gone),
            gone[0],
        )
        return items, True
    if rebuild or changed:
        if changed:
            logger.warning(
                "%d consumed file(s) changed (e.g. %s): rebuilding", len(changed), changed[0]
            )
        return items, True
    if gone:
        logger.info(
            "%d consumed file(s) are gone; their rows stay (data.vanished_files: keep)", len(gone)
        )
    return [i for k, i in current.items() if k not in consumed], False


def plan_stream(
    source: MessageSource,
    previous: DatasetVersion | None,
    consumed: dict[str, dict[str, Any]],
    items: list[dict[str, Any]],
    data: DataConfig,
    dataset: str,
) -> tuple[list[dict[str, Any]], bool, dict[str, Any]]:
    """(partitions to read, whether the dataset is new, what the manifest records of the
    plan: messages lost to retention, each partition's range and lag) for a topic or
    stream: what follows the positions the latest version committed. A log is never read
    again whole (its messages expire), so a changed data config is refused."""
    if previous is not None and previous.manifest.config_hash != config_hash(data):
        raise DataError(
            f"the data config changed since {previous.id}, and a topic cannot be read again "
            "whole (its messages expire): ingest it into a new dataset (data.dataset), or "
            "restore the config; nothing was committed"
        )
    todo, lost = source.pending(consumed, items, data.max_lost_messages)
    if previous is None and not todo:
        raise DataError(f"{source.uri} has no messages yet: nothing to ingest")
    partitions = source.lag(todo)
    export_lag(dataset, source.name, items, partitions)
    for p in partitions:
        logger.info(
            "%s, %d message(s) behind%s",
            source.describe(p),
            p["lag_messages"],
            "" if p["lag_s"] is None else f", the oldest {p['lag_s']:.1f} s old",
        )
    return todo, previous is None, {"lost_messages": lost, "partitions": partitions}


# --------------------------------------------------------------------------- thresholds


def _check_thresholds(summary: PartSummary, data: DataConfig) -> None:
    failed, allowed = len(summary.failed), data.failed_files_allowed(summary.files)
    if failed > allowed or (failed and failed == summary.files):
        first = summary.failed[0]
        raise FilesFailed(
            f"{failed} of {summary.files} file(s) could not be read (data.max_failed_files="
            f"{data.max_failed_files:g} allows {allowed}); nothing was committed and the next "
            f"ingest reads them again. First: {first['path']}: {first['reason']}"
        )
    bad = summary.rows["quarantine"]
    if summary.read and bad / summary.read > data.max_quarantine_fraction:
        raise DataError(
            f"{bad} of {summary.read} rows ({bad / summary.read:.1%}) broke the schema, above "
            f"data.max_quarantine_fraction={data.max_quarantine_fraction}; nothing was "
            f"committed. Top reasons: {dict(list(summary.reasons.items())[:5])}"
        )


# --------------------------------------------------------------------------- the manifest


def _manifest(
    cfg: PipelineConfig,
    source: Source,
    previous: DatasetVersion | None,
    rebuild: bool,
    summary: PartSummary,
    merged: dict[str, Any],
    pre: Preprocessor,
    quarantine_files: list[dict[str, Any]],
    state_name: str,
    ingest_id: str,
    planned: dict[str, Any] | None = None,
) -> Manifest:
    """What the commit records: totals since the last rebuild, this ingest's accounting,
    the schema contract, the preprocessing fitted on every training row and the profile."""
    before = None if rebuild or previous is None else previous.manifest
    labels = Counter(before.valid_labels if before else {})
    labels.update(summary.valid_labels)
    reasons = Counter(before.quarantine_reasons if before else {})
    reasons.update(summary.reasons)
    rows = {
        k: (getattr(before.rows, k) if before else 0) + summary.rows[k]
        for k in ("read", "train", "valid", "quarantine")
    }
    rows["valid_unseen_label"] = (
        sum(n for k, n in labels.items() if k not in pre.classes) if pre.classes else 0
    )
    return Manifest.model_validate(
        {
            "dataset": cfg.dataset_name,
            "created_at": dt.datetime.now(dt.UTC).isoformat(),
            "config_hash": config_hash(cfg.data),
            "source": {"uri": source.uri, "format": cfg.data.format},
            "base": None if before is None else previous.base,  # type: ignore[union-attr]
            "rows": rows,
            "valid_labels": dict(labels),
            "quarantine_reasons": dict(reasons.most_common()),
            "unreadable": [*(before.unreadable if before else []), *summary.unreadable],
            "schema": {n: s.model_dump() for n, s in used_columns(cfg.data).items()},
            "preprocessor": pre.to_dict(),
            "profile": stats.profile(merged),
            "state": state_name,
            "ingest": {"id": ingest_id, **summary.as_dict(), **(planned or {})},
            "quarantine_files": quarantine_files,
        }
    )


# --------------------------------------------------------------------------- ingest


def ingest(cfg: PipelineConfig, source: Source | None = None) -> DatasetVersion:
    """Process what is new in the source into a new committed version (or reuse the
    latest when nothing is new)."""
    from rayops import tracking

    root = dataset_root(cfg)
    ensure_bucket(root_of(cfg.storage))
    tracking.require_reachable(cfg.tracking)  # before anything is committed
    source = source or source_of(cfg)
    rows_location, quarantine_location = root.join(ROWS), root.join(QUARANTINE)
    # The version this ingest plans against is the one its commit is checked against: a
    # commit by anyone else in between makes this one fail whole (CommitConflict).
    table = delta.ensure_table(rows_location, rows_schema(cfg.data), [SPLIT])
    previous = version_of(cfg, table)
    consumed: dict[str, dict[str, Any]] = {}
    earlier_stats: list[dict[str, Any]] = []
    quarantine = None
    if previous is not None:
        quarantine = complete_quarantine(previous)  # in case its ingest died before
        state = previous.state()
        consumed, earlier_stats = state["consumed"], [state["stats"]]
    items = source.snapshot()
    planned: dict[str, Any] = {}
    if isinstance(source, MessageSource):
        todo, rebuild, planned = plan_stream(
            source, previous, consumed, items, cfg.data, cfg.dataset_name
        )
    else:
        todo, rebuild = plan(
            previous, consumed, items, config_hash(cfg.data), cfg.data.vanished_files
        )
    if previous is not None and not todo:
        logger.info("nothing new at %s: dataset %s is current", source.uri, previous.id)
        _track(cfg, previous)  # in case logging failed after the commit
        return previous

    logger.info(
        "ingesting %d %s%s from %s",
        len(todo),
        "" if rebuild else "new ",
        f"{source.unit}(s)" if isinstance(source, MessageSource) else "file(s)",
        source.uri,
    )
    result = write_part(source, todo, rows_location, quarantine_location, cfg.data)
    whole = cfg.data.forecast is not None or cfg.data.recommend is not None
    existing = None if rebuild or previous is None or not whole else previous.table("train")
    result = settled(result, existing, rows_location, quarantine_location, cfg.data)
    summary = result.summary
    logger.info("%s", describe(summary, reasons=3))
    _check_thresholds(summary, cfg.data)  # raises: the files written stay invisible

    if rebuild:
        consumed, earlier_stats = {}, []
    merged = stats.merge([*earlier_stats, summary.stats])
    if cfg.data.forecast is not None:
        pre = fit_series(observations(result, existing, rows_location), cfg.data)
    elif cfg.data.recommend is not None:
        pre = fit_interactions(
            observations(result, existing, rows_location), cfg.data, attribute_tables(cfg)
        )
    else:
        pre = fit(merged, cfg.data)
    version = _commit(
        cfg,
        source,
        table,
        previous,
        rebuild,
        result,
        {
            **consumed,
            **{i["key"]: i for i in todo if i["path"] not in {f["path"] for f in summary.failed}},
        },
        merged,
        pre,
        planned,
    )
    _after_commit(cfg, version, quarantine)
    return version


def _commit(
    cfg: PipelineConfig,
    source: Source,
    table: Any,
    previous: DatasetVersion | None,
    rebuild: bool,
    result: Any,
    consumed: dict[str, dict[str, Any]],
    merged: dict[str, Any],
    pre: Preprocessor,
    planned: dict[str, Any] | None = None,
) -> DatasetVersion:
    """Write this ingest's state file (merged statistics, consumed files), then commit the
    written rows with the manifest: one Delta commit, or none."""
    root = dataset_root(cfg)
    ingest_id = uuid.uuid4().hex[:16]
    state_name = f"{ingest_id}.json"
    root.join(STATE, state_name).write_json({"stats": merged, "consumed": consumed})
    manifest = _manifest(
        cfg,
        source,
        previous,
        rebuild,
        result.summary,
        merged,
        pre,
        result.quarantine_files,
        state_name,
        ingest_id,
        planned,
    )
    sequence = (table.transaction_version(delta.INGEST_APP) or 0) + 1
    number = delta.commit(
        root.join(ROWS),
        table,
        [delta.action_from_dict(a) for a in result.rows_files],
        mode="overwrite" if rebuild else "append",
        schema=rows_schema(cfg.data),
        partition_by=[SPLIT],
        metadata={MANIFEST_KEY: manifest.to_json()},
        transaction=Transaction(delta.INGEST_APP, sequence),
    )
    return DatasetVersion(cfg.dataset_name, number, root, manifest)


def _after_commit(cfg: PipelineConfig, version: DatasetVersion, quarantine: Any) -> None:
    """The quarantine table, the clean-up and MLflow: what follows a commit (a failure
    here loses nothing the commit holds)."""
    if quarantine is not None:
        quarantine.update_incremental()
    complete_quarantine(version, quarantine)
    rows = version.manifest.rows
    logger.info("committed %s: %d train + %d valid rows", version.id, rows.train, rows.valid)
    if version.version % VACUUM_EVERY == 0:
        try:
            clean_up(cfg, version)
        except RayopsError as exc:  # committed already: a failed clean-up removes less
            logger.warning("clean-up of %s stopped, the rest is kept: %s", version.id, exc)
    _track(cfg, version)


def clean_up(cfg: PipelineConfig, latest: DatasetVersion) -> None:
    """Remove what no version needs: data files of versions older than
    ``data.retention_hours`` (files of failed or retried writes too), log entries before
    them, old state files. Every version a registered model trained on stays readable, with
    everything after it, for as long as that model is registered (the monitor and the gate
    read it back); when the registry cannot say which those are, nothing is removed."""
    hours = cfg.data.retention_hours
    cutoff = time.time() - hours * 3600
    try:
        trained = trained_versions(cfg)
    except RayopsError as exc:
        logger.warning("clean-up skipped, nothing removed: %s", exc)
        return
    rows, quarantine = latest.root.join(ROWS), latest.root.join(QUARANTINE)
    young = delta.first_young_version(rows, cutoff)
    keep_from = min([*trained, *([young] if young is not None else []), latest.version])
    removed = [
        *delta.vacuum(rows, hours, trained),
        *delta.vacuum(quarantine, hours),
        *delta.expire_log(rows, keep_from),
    ]
    young = delta.first_young_version(quarantine, cutoff)
    if young is not None:  # the quarantine table is read at its latest version only
        removed += delta.expire_log(quarantine, young)
    removed += _old_state_files(latest, cutoff)
    if removed:
        logger.info(
            "removed %d file(s) older than %d h that no version needs (kept: every "
            "version from v%d on)",
            len(removed),
            hours,
            keep_from,
        )


def trained_versions(cfg: PipelineConfig) -> list[int]:
    """The versions of this dataset that registered models trained on."""
    from rayops import tracking

    datasets = tracking.trained_datasets(cfg.tracking, cfg.model_name)
    unknown = sorted(v for v, dataset in datasets.items() if dataset is None)
    if unknown:
        raise DataError(
            f"{cfg.model_name} version(s) {unknown} do not say which dataset "
            f"version they trained on (tag {tracking.DATASET_TAG} on the version, "
            "e.g. churn/v000003), so clean-up cannot tell what must stay"
        )
    prefix = f"{cfg.dataset_name}/v"
    return sorted(
        {version_number(d) for d in datasets.values() if d is not None and d.startswith(prefix)}
    )


def _old_state_files(latest: DatasetVersion, cutoff: float) -> list[str]:
    removed = []
    for info in latest.root.join(STATE).list_files():
        if info.path.endswith(latest.manifest.state) or info.mtime is None:
            continue
        if info.mtime.timestamp() < cutoff:
            latest.root.child(info.path).delete()
            removed.append(info.path)
    return removed


def _track(cfg: PipelineConfig, version: DatasetVersion) -> None:
    """Log the ingest that made ``version`` (its newest part) to MLflow, once: source and
    dataset ids only, never credentials."""
    from rayops import tracking

    if tracking.runs_tagged(
        cfg.tracking,
        cfg.experiment_name,
        {tracking.KIND_TAG: "ingest", tracking.DATASET_TAG: version.id},
    ):
        return
    part = version.manifest.ingest
    rows = part.rows
    metrics: dict[str, float] = {
        "files_read": part.files - len(part.failed),
        "files_unreadable": len(part.unreadable),
        "files_failed": len(part.failed),
        "rows_read": rows.read,
        "rows_train": rows.train,
        "rows_valid": rows.valid,
        "rows_quarantined": rows.quarantine,
    }
    for reason, count in part.reasons.items():
        metrics[tracking.metric_name(f"quarantined.{reason}")] = count
    if part.partitions:  # a topic: how far behind it each partition was
        metrics["lost_messages"] = part.lost_messages
        metrics["lag_messages"] = sum(p["lag_messages"] for p in part.partitions)
        for p in part.partitions:
            metrics[f"lag_messages.p{p['partition']}"] = p["lag_messages"]
            if p["lag_s"] is not None:
                metrics[f"lag_s.p{p['partition']}"] = p["lag_s"]
        ages = [p["lag_s"] for p in part.partitions if p["lag_s"] is not None]
        if ages:
            metrics["lag_s"] = max(ages)
    run_id = tracking.start_run(
        cfg.tracking,
        cfg.experiment_name,
        f"{cfg.name}-ingest",
        params={
            "dataset_version": version.id,
            "source": version.manifest.source.uri,
            "format": cfg.data.format,
        },
        tags={tracking.KIND_TAG: "ingest", tracking.DATASET_TAG: version.id},
    )
    tracking.log_metrics(cfg.tracking, run_id, metrics, step=version.version)
    tracking.log_dict(
        cfg.tracking,
        run_id,
        version.manifest.rows.model_dump()
        | {
            "quarantine_reasons": part.reasons,
            "unreadable": part.unreadable,
            "failed": part.failed,
        },
        "ingest_summary.json",
    )
    tracking.end_run(cfg.tracking, run_id)


def ingest_retrying(cfg: PipelineConfig, attempts: int = 3, wait_s: float = 1.0) -> DatasetVersion:
    """:func:`ingest`, run again when it lost a commit race: another ingest (``ingest
    --watch`` beside the operate loop, say) committed first, so this one plans again
    against that version and reads only what is still new. Any other error is raised."""
    for attempt in range(2, attempts + 1):
        try:
            return ingest(cfg)
        except delta.CommitConflict as exc:
            logger.warning("%s; planning again (attempt %d of %d)", exc, attempt, attempts)
            time.sleep(wait_s)
    return ingest(cfg)


def watch(
    cfg: PipelineConfig,
    interval_s: float,
    polls: int | None = None,
    on_version: Callable[[DatasetVersion], None] | None = None,
) -> None:
    """Poll the source every ``interval_s`` (from the start of one poll to the next) and
    ingest each arrival (``polls`` bounds the loop for tests). A poll that lost a commit
    race, could not fetch files or could not reach the broker commits nothing and is
    retried at the next poll; any other error ends the watch."""
    seen: int | None = None
    count = 0
    while polls is None or count < polls:
        started = time.monotonic()
        try:
            version = ingest(cfg)
        except (delta.CommitConflict, FilesFailed, SourceUnavailable) as exc:
            logger.warning("%s; trying again in %s s", exc, interval_s)
            version = None
        if version is not None and version.version != seen:
            seen = version.version
            if on_version:
                on_version(version)
        count += 1
        if polls is None or count < polls:
            time.sleep(max(0.0, interval_s - (time.monotonic() - started)))
