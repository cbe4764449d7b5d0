"""Mergeable per-column statistics of typed (validated) data.

:func:`table_stats` runs on each block in parallel; :func:`merge` combines results in any
order. The merged statistics fit the preprocessing (means, spreads, vocabularies) and make
the reference profile (quantiles, histograms, frequencies, null rates) that drift
monitoring compares served traffic against.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayops.config import ColumnSpec
from rayops.tasks import task_of
from rayops.tasks.scoring import label_strings, mean_std

SAMPLE_PER_BLOCK = 256
SAMPLE_MAX = 4096  # values kept for quantiles; error of a quantile ~ 1/sqrt(4096)
MAX_TRACKED_CATEGORIES = 2000  # a text column's long tail is counted as one remainder

_CALENDAR = {
    "hour": pc.hour,
    "weekday": pc.day_of_week,
    "month": pc.month,
    "year": pc.year,
    "dayofyear": pc.day_of_year,
}


def calendar(values: pa.ChunkedArray, part: str) -> pa.ChunkedArray:
    """One calendar feature of a timestamp column, as float64 (nulls stay null)."""
    return pc.cast(_CALENDAR[part](values), pa.float64())


def numeric_columns(
    name: str, spec: ColumnSpec, column: pa.ChunkedArray
) -> list[tuple[str, pa.ChunkedArray]]:
    """The numeric signals a typed column carries: itself, or its calendar features."""
    if spec.type == "datetime":
        return [(f"{name}.{part}", calendar(column, part)) for part in spec.parts]
    return [(name, pc.cast(column, pa.float64()))]


def _numeric(values: pa.ChunkedArray, rows: int) -> dict[str, Any]:
    data = values.to_numpy(zero_copy_only=False)
    data = data[~np.isnan(data)]
    sample = data
    if data.size > SAMPLE_PER_BLOCK:
        sample = np.random.default_rng(data.size).choice(data, SAMPLE_PER_BLOCK, replace=False)
    return {
        "kind": "numeric",
        "rows": rows,
        "n": int(data.size),
        "sum": float(data.sum()),
        "sumsq": float(np.square(data).sum()),
        "min": float(data.min()) if data.size else None,
        "max": float(data.max()) if data.size else None,
        "sample": sample.tolist(),
        "weight": [data.size / max(sample.size, 1)] * sample.size,
    }


def _categorical(values: pa.ChunkedArray, rows: int) -> dict[str, Any]:
    counts = pc.value_counts(values.drop_null()).to_pylist()
    return {
        "kind": "categorical",
        "rows": rows,
        "n": int(len(values) - values.null_count),
        "counts": {c["values"]: int(c["counts"]) for c in counts},
    }


def table_stats(
    table: pa.Table,
    columns: Mapping[str, ColumnSpec],
    label: str | None = None,
    task: str | None = None,
) -> dict[str, Any]:
    """Statistics of every column in ``columns`` (datetime columns by calendar feature)."""
    out: dict[str, Any] = {}
    for name, spec in columns.items():
        col = table.column(name)
        as_categories = spec.type in ("categorical", "text") or (
            name == label and task is not None and task_of(task).categorical_label
        )
        if as_categories:
            text = label_strings(col) if name == label else pc.cast(col, pa.string())
            out[name] = _categorical(text, table.num_rows)
        else:
            for key, values in numeric_columns(name, spec, col):
                out[key] = _numeric(values, table.num_rows)
    return out


def _merge_sample(a: dict[str, Any], b: Mapping[str, Any]) -> None:
    values = np.asarray(a["sample"] + list(b["sample"]), dtype=np.float64)
    weights = np.asarray(a["weight"] + list(b["weight"]), dtype=np.float64)
    if values.size > SAMPLE_MAX:
        rng = np.random.default_rng(values.size)
        keep = rng.choice(values.size, SAMPLE_MAX, replace=False, p=weights / weights.sum())
        total = weights.sum()
        values, weights = values[keep], np.full(SAMPLE_MAX, total / SAMPLE_MAX)
    a["sample"], a["weight"] = values.tolist(), weights.tolist()


def merge(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Combine :func:`table_stats` results (order does not matter)."""
    merged: dict[str, Any] = {}
    for part in parts:
        for key, entry in part.items():
            target = merged.get(key)
            if target is None:
                merged[key] = {
                    k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
                    for k, v in entry.items()
                }
                continue
            for field in ("rows", "n"):
                target[field] += entry[field]
            if entry["kind"] == "categorical":
                counts = Counter(target["counts"])
                counts.update(entry["counts"])
                target["counts"] = dict(counts.most_common(MAX_TRACKED_CATEGORIES))
                continue
            target["sum"] += entry["sum"]
            target["sumsq"] += entry["sumsq"]
            for field, pick in (("min", min), ("max", max)):
                known = [v for v in (target[field], entry[field]) if v is not None]
                target[field] = pick(known) if known else None
            _merge_sample(target, entry)
    return merged


QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)


def profile(merged: Mapping[str, Any], top: int = 50, bins: int = 10) -> dict[str, Any]:
    """The reference profile of a dataset version, from its merged statistics."""
    out: dict[str, Any] = {}
    for key, entry in merged.items():
        rows = entry["rows"]
        summary: dict[str, Any] = {
            "kind": entry["kind"],
            "rows": rows,
            "null_rate": 1.0 - entry["n"] / rows if rows else 0.0,
        }
        if entry["kind"] == "categorical":
            counts = Counter(entry["counts"])
            n = max(entry["n"], 1)
            summary["frequencies"] = {k: v / n for k, v in counts.most_common(top)}
            summary["other_rate"] = 1.0 - sum(summary["frequencies"].values())
        elif entry["n"]:
            sample = np.asarray(entry["sample"])
            weights = np.asarray(entry["weight"])
            mean, std = mean_std(entry)
            qs = np.quantile(sample, QUANTILES, method="inverted_cdf", weights=weights)
            edges = np.unique(
                np.quantile(
                    sample, np.linspace(0, 1, bins + 1), method="inverted_cdf", weights=weights
                )
            )
            hist, _ = (
                np.histogram(sample, bins=edges, weights=weights)
                if edges.size > 1
                else (np.array([weights.sum()]), edges)
            )
            summary.update(
                mean=mean,
                std=std,
                min=entry["min"],
                max=entry["max"],
                quantiles=dict(zip(map(str, QUANTILES), qs.tolist(), strict=True)),
                histogram={
                    "edges": edges.tolist(),
                    "fractions": (hist / max(hist.sum(), 1e-12)).tolist(),
                },
            )
        out[key] = summary
    return out
