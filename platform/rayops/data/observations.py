"""What an ingest of observations of series (or of interactions) does before its commit.

Rows are checked one at a time by the streaming pass; two things need the whole series:

- a second observation of a series at a step it already has (in the dataset, or earlier in
  this ingest) is quarantined with its reason; the first one stays;
- the layout (:class:`rayops.data.series.SeriesLayout`: the validation period, each
  series' level and MASE scale) and the preprocessing of the examples are fitted on the
  version's observations, and saved in its manifest like a tabular dataset's preprocessing.

Interactions need the whole dataset too: their layout
(:class:`rayops.data.interactions.InteractionLayout`, the catalogue and the users) is fitted
on every curated interaction (:func:`fit_interactions`).
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayops.config import ColumnSpec, DataConfig
from rayops.config.recommend import AttributeTableConfig
from rayops.data import stats
from rayops.data import table as delta
from rayops.data.curate import PartResult, PartSummary, quarantine_rows
from rayops.data.interactions import encode_attributes, fit_interaction_layout
from rayops.data.preprocess import Preprocessor, fit
from rayops.data.series import SeriesLayout, all_examples, fit_layout
from rayops.data.validate import ERROR, RAW, SOURCE_FILE, SOURCE_ROW, validate_frame
from rayops.errors import DataError
from rayops.storage import Location

logger = logging.getLogger(__name__)
FIT_EXAMPLES = 200_000  # the preprocessing of examples is fitted on about this many


def _read(location: Location, actions: list[dict[str, Any]]) -> list[pa.Table]:
    tables = []
    for action in actions:
        target = location.join(action["path"])
        with target.io("read curated rows from"):
            tables.append(pq.read_table(target.path, filesystem=target.fs))
    return tables


def _keys(table: pa.Table, data: DataConfig) -> pd.Series:
    f = data.forecast
    assert f is not None
    parts = [pc.cast(table.column(s), pa.string()).to_pandas() for s in f.series]
    parts.append(pc.cast(table.column(f.timestamp), pa.int64()).to_pandas().astype(str))
    return (
        pd.Series(["\x1f".join(v) for v in zip(*parts, strict=True)], dtype=object)
        if parts
        else pd.Series([], dtype=object)
    )


def _describe(row: dict[str, Any], data: DataConfig) -> str:
    f = data.forecast
    assert f is not None
    named = [f"{s}={row[s]}" for s in f.series] + [f"{f.timestamp}={row[f.timestamp]}"]
    return ", ".join(named)


def _duplicates(
    existing: pa.Table | None, parts: list[pa.Table], data: DataConfig
) -> list[np.ndarray]:
    """Per part, the rows that repeat an observation of the dataset or of an earlier row
    (by source file and line) of this ingest."""
    seen = set(_keys(existing, data)) if existing is not None and existing.num_rows else set()
    order = []
    for i, part in enumerate(parts):
        frame = pd.DataFrame(
            {
                "file": part.column(SOURCE_FILE).to_pandas(),
                "line": part.column(SOURCE_ROW).to_pandas(),
                "key": _keys(part, data),
                "part": i,
                "row": np.arange(part.num_rows),
            }
        )
        order.append(frame)
    marks = [np.zeros(p.num_rows, dtype=bool) for p in parts]
    if not order:
        return marks
    rows = pd.concat(order).sort_values(["file", "line", "part", "row"], kind="stable")
    repeated = rows["key"].duplicated() | rows["key"].isin(seen)
    for part, row in zip(rows["part"][repeated], rows["row"][repeated], strict=True):
        marks[part][row] = True
    return marks


def _quarantined(rows: pa.Table, data: DataConfig) -> pa.Table:
    f = data.forecast
    assert f is not None
    records = rows.to_pylist()
    reasons = [
        f"{f.timestamp}: duplicate of an observation of the same series and step "
        f"('{_describe(r, data)}')"
        for r in records
    ]
    raw = [
        json.dumps({k: v for k, v in r.items() if not k.startswith("_")}, default=str)
        for r in records
    ]
    return quarantine_rows(
        rows.append_column(RAW, pa.array(raw, pa.string())).append_column(
            ERROR, pa.array(reasons, pa.string())
        )
    )


def drop_duplicates(
    result: PartResult,
    existing: pa.Table | None,
    rows: Location,
    quarantine: Location,
    data: DataConfig,
) -> PartResult:
    """The part with every repeated observation moved to the quarantine: files that hold
    one are written again without it (the first files, never committed, are left to the
    clean-up)."""
    parts = _read(rows, result.rows_files)
    marks = _duplicates(existing, parts, data)
    moved = int(sum(m.sum() for m in marks))
    if not moved:
        return result
    files, quarantined = [], list(result.quarantine_files)
    for action, part, mark in zip(result.rows_files, parts, marks, strict=True):
        if not mark.any():
            files.append(action)
            continue
        kept = part.filter(pa.array(~mark))
        if kept.num_rows:
            files.append(
                delta.action_to_dict(delta.write_file(rows, kept, action["partition_values"]))
            )
        quarantined.append(
            delta.action_to_dict(
                delta.write_file(quarantine, _quarantined(part.filter(pa.array(mark)), data))
            )
        )
    s = result.summary
    counts = dict(s.rows)
    counts["train"] -= moved
    counts["quarantine"] += moved
    reasons = dict(s.reasons)
    assert data.forecast is not None
    kind = f"{data.forecast.timestamp}: duplicate of an observation of the same series and step"
    reasons[kind] = reasons.get(kind, 0) + moved
    logger.info("quarantined %d repeated observation(s) (same series and step)", moved)
    summary = PartSummary(
        s.files,
        counts,
        dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        s.unreadable,
        s.failed,
        s.valid_labels,
        s.stats,
    )
    return replace(result, summary=summary, rows_files=files, quarantine_files=quarantined)


def settled(
    result: PartResult,
    existing: pa.Table | None,
    rows: Location,
    quarantine: Location,
    data: DataConfig,
) -> PartResult:
    """The part, with what needs whole series done: for series, observations that repeat
    a step moved to the quarantine (:func:`drop_duplicates`); other data as it is."""
    if data.forecast is None:
        return result
    return drop_duplicates(result, existing, rows, quarantine, data)


def observations(result: PartResult, existing: pa.Table | None, rows: Location) -> pa.Table:
    """The version's observations: those kept before and this part's."""
    tables = _read(rows, result.rows_files)  # a part's files hold no split column
    if existing is not None and existing.num_rows:
        tables.insert(0, existing.select(tables[0].column_names) if tables else existing)
    return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})


def _sparser(every: int, periods: list[int], factor: int) -> int:
    """An origin stride at least ``every * factor`` that shares no factor with the cycles
    (so sampled origins still fall on every phase of a day and a week)."""
    stride = max(every * factor, 1)
    while any(math.gcd(stride, p) > 1 for p in periods) and stride > 1:
        stride += 1
    return stride


def _shared_scale(merged: dict[str, Any], layout: SeriesLayout) -> dict[str, Any]:
    """The statistics the value features (lags, each cycle's value and means) are scaled
    by: all of them the latest value's, since all are the series' values over its level.
    Each scaled by its own spread, a feature that barely varied in training (a week's mean
    over a short history) would blow up the network's input once it moves; in one scale it
    stays in proportion. Each keeps its own count of missing values."""
    reference = merged.get(layout.value_features[0], {})
    for name in layout.value_features[1:]:
        own = merged.get(name, {})
        missing = own.get("rows", 0) - own.get("n", 0)
        merged[name] = {**reference, "rows": reference.get("n", 0) + missing}
    return merged


def fit_series(observed: pa.Table, data: DataConfig) -> Preprocessor:
    """The layout and the preprocessing of the examples, fitted on a sample of the
    training examples (origins spread over every phase of the cycles)."""
    layout = fit_layout(observed, data)
    per_origin = layout.horizon / layout.origin_every
    factor = max(1, math.ceil(observed.num_rows * per_origin / FIT_EXAMPLES))
    sample = replace(
        layout,
        origin_every=_sparser(layout.origin_every, layout.periods, factor)
        if factor > 1
        else layout.origin_every,
    )
    train = all_examples(observed, sample, "train")
    if not train.num_rows:
        raise DataError(
            f"no training examples: each series needs {layout.lookback} steps of history "
            f"before its first origin and a target before the validation period (from "
            f"{layout.validation_start}); the data spans too little time"
        )
    specs = {n: ColumnSpec.model_validate(s) for n, s in layout.feature_specs().items()}
    specs[data.label] = ColumnSpec.model_validate({"type": "numeric"})
    merged = _shared_scale(stats.table_stats(train, specs, data.label, data.task), layout)
    examples = DataConfig.model_construct(
        label=data.label,
        task=data.task,
        columns=specs,
        features=None,
        exclude=[],
        null_strategy="impute",
        scaling=data.scaling,
    )
    pre = fit(merged, examples)
    scale = sample.origin_every / layout.origin_every
    counts = {
        "train": int(train.num_rows * scale),
        "valid": len(layout.levels) * data.forecast.validation_steps,  # type: ignore[union-attr]
    }
    return replace(pre, series={"layout": layout.to_dict(), "examples": counts})


# Slots travel to the model as float32, exact up to 2**24.
MAX_SLOTS = 1 << 24


def read_attributes(table: AttributeTableConfig, location: Location, key: str) -> pa.Table:
    """An attribute table's rows that keep its contract, one per ``key`` value (the first
    of a repeated id). Too many broken rows fail the ingest, naming the reasons."""
    if not location.exists():
        raise DataError(
            f"the attribute table {location.uri} does not exist (its source in "
            "data.recommend.items or users)"
        )
    raw = location.read_bytes()
    if table.format == "csv":
        frame = pd.read_csv(io.BytesIO(raw), dtype=str)
    elif table.format == "json":
        frame = pd.read_json(io.BytesIO(raw), lines=True)
    else:
        frame = pd.read_parquet(io.BytesIO(raw))
    missing = [c for c in table.columns if c not in frame.columns]
    if missing:
        raise DataError(f"the attribute table {location.uri} lacks the column(s) {missing}")
    frame = frame[list(table.columns)].astype(object).where(frame.notna(), None)
    typed = validate_frame(frame, table.columns)
    errors = typed.column(ERROR)
    broken = len(errors) - errors.null_count
    if broken:
        reasons = Counter(e for e in errors.to_pylist() if e is not None)
        first = reasons.most_common(1)[0][0]
        logger.warning(
            "%s: %d of %d row(s) break its contract and are left out (%s)",
            location.uri,
            broken,
            len(frame),
            "; ".join(f"{n}x {r}" for r, n in reasons.most_common(3)),
        )
        if broken > table.max_quarantine_fraction * len(frame):
            raise DataError(
                f"the attribute table {location.uri}: {broken} of {len(frame)} "
                "rows break its contract, more than its max_quarantine_fraction "
                f"{table.max_quarantine_fraction} (e.g. {first})"
            )
    good = typed.filter(pc.is_null(errors)).select(list(table.columns))
    ids = pc.cast(good.column(key), pa.string()).to_pandas()
    return good.filter(pa.array(~ids.duplicated().to_numpy()))


def fit_interactions(
    observed: pa.Table, data: DataConfig, tables: Mapping[str, pa.Table] | None = None
) -> Preprocessor:
    """The layout of every curated interaction: the catalogue, the users, and about how
    many training and validation examples they give; with attribute tables (``items``,
    ``users``), each attribute's code per item or user slot."""
    layout, counts = fit_interaction_layout(observed, data)
    for name, ids in (("items", layout.items), ("users", layout.users)):
        if len(ids) >= MAX_SLOTS:
            raise DataError(f"{len(ids)} {name}: rayops ranks at most {MAX_SLOTS - 1:,}")
    if not counts["valid"]:
        raise DataError(
            f"no user has {layout.min_interactions} positive interactions "
            f"(data.recommend.min_interactions): nothing to validate a recommender on"
        )
    r = data.recommend
    assert r is not None
    tables = tables or {}
    features = []
    for key, column, ids in (("users", r.user, layout.users), ("items", r.item, layout.items)):
        spec = getattr(r, key)
        attributes = (
            []
            if key not in tables or spec is None
            else encode_attributes(tables[key], ids, column, spec.columns)
        )
        features.append({"name": column, "kind": "id", "ids": len(ids), "attributes": attributes})
    return Preprocessor(
        data.task,
        data.label,
        features,
        {"k": r.k, "items": layout.items, "history": r.history},
        interactions={"layout": layout.to_dict(), "examples": counts},
    )
