"""Drift of served records against a dataset version's reference profile.

Effect sizes on the reference's own bins, never p-values: a KS or chi-squared test flags
every feature of a large window and nothing of a small one, so the verdicts here come from
the population stability index (PSI) and the Jensen-Shannon distance, with a minimum window
below which the answer is "insufficient data". Numeric features are binned on the reference
quantile bins (values outside the reference range fall in the end bins); categorical ones on
the reference's categories plus one bucket for everything else (the reference's rare tail and
values it never saw). Empty bins get a small probability so neither measure divides by zero.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

Verdict = Literal["ok", "warn", "drift", "insufficient data"]
OTHER_BUCKET = "__other__"
SMOOTHING = 1e-4  # probability of an empty bin: PSI of a bin seen on one side stays finite


# How a verdict is logged as a number (MLflow metrics, Prometheus gauges).
VERDICT_CODES = {"insufficient data": -1.0, "ok": 0.0, "warn": 1.0, "drift": 2.0}


@dataclass(frozen=True)
class DriftThresholds:
    """When a feature warns or drifts, and when the whole window does."""

    psi_warn: float = 0.1
    psi_drift: float = 0.25
    min_rows: int = 200
    drifted_share: float = 0.3
    key_features: tuple[str, ...] = ()


@dataclass(frozen=True)
class FeatureDrift:
    name: str
    kind: str
    rows: int
    psi: float | None
    js_distance: float | None
    null_rate: float
    reference_null_rate: float
    verdict: Verdict
    bins: list[str] = field(default_factory=list)
    reference: list[float] = field(default_factory=list)
    current: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class DriftReport:
    rows: int
    verdict: Verdict
    drifted: list[str]
    features: list[FeatureDrift]
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def thresholds_for(monitor: Any) -> DriftThresholds:
    """The thresholds a config's ``monitor`` section sets."""
    return DriftThresholds(
        monitor.psi_warn,
        monitor.psi_drift,
        monitor.min_rows,
        monitor.drifted_share,
        tuple(monitor.key_features),
    )


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index of two distributions over the same bins."""
    p, q = _smoothed(reference), _smoothed(current)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(reference: np.ndarray, current: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2: 0 same, 1 disjoint)."""
    p, q = _smoothed(reference), _smoothed(current)
    m = (p + q) / 2
    divergence = 0.5 * np.sum(p * np.log2(p / m)) + 0.5 * np.sum(q * np.log2(q / m))
    return float(np.sqrt(max(divergence, 0.0)))


def _smoothed(fractions: np.ndarray) -> np.ndarray:
    f = np.maximum(np.asarray(fractions, dtype=np.float64), SMOOTHING)
    return f / f.sum()


def _numeric_bins(
    summary: Mapping[str, Any], values: np.ndarray
) -> tuple[list[str], np.ndarray, np.ndarray]:
    edges = np.asarray(summary["histogram"]["edges"], dtype=np.float64)
    reference = np.asarray(summary["histogram"]["fractions"], dtype=np.float64)
    if edges.size < 2:  # a constant reference: one bin, "the value" against "anything else"
        inside = np.isclose(values, edges[0]) if edges.size else np.zeros(len(values), bool)
        counts = np.array([inside.sum(), (~inside).sum()], dtype=np.float64)
        return ["= reference", "other"], np.array([1.0, 0.0]), counts
    # inner edges only: below the first bin counts in it, above the last in the last
    index = np.searchsorted(edges[1:-1], values, side="right")
    counts = np.bincount(index, minlength=len(reference)).astype(np.float64)
    names = [f"[{lo:.4g}, {hi:.4g})" for lo, hi in itertools.pairwise(edges)]
    return names, reference, counts


def _categorical_bins(
    summary: Mapping[str, Any], values: Sequence[Any]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    frequencies: Mapping[str, float] = summary["frequencies"]
    names = [*frequencies, OTHER_BUCKET]
    reference = np.array([*frequencies.values(), max(summary.get("other_rate", 0.0), 0.0)])
    slot = {name: i for i, name in enumerate(frequencies)}
    counts = np.zeros(len(names))
    for value in values:
        counts[slot.get(str(value), len(names) - 1)] += 1
    return names, reference, counts


def feature_drift(
    name: str,
    summary: Mapping[str, Any],
    values: Sequence[Any],
    thresholds: DriftThresholds = DriftThresholds(),
) -> FeatureDrift:
    """One feature's drift: ``values`` are the window's raw values (None for a null)."""
    present = [v for v in values if v is not None and v == v]  # drops None and NaN
    rows = len(values)
    null_rate = 1.0 - len(present) / rows if rows else 0.0
    if summary["kind"] == "categorical":
        bins, reference, counts = _categorical_bins(summary, present)
    else:
        bins, reference, counts = _numeric_bins(summary, np.asarray(present, dtype=np.float64))
    base = dict(
        name=name,
        kind=summary["kind"],
        rows=rows,
        null_rate=null_rate,
        reference_null_rate=float(summary.get("null_rate", 0.0)),
        bins=bins,
        reference=[float(r) for r in reference],
    )
    if len(present) < thresholds.min_rows:
        return FeatureDrift(
            **base, psi=None, js_distance=None, verdict="insufficient data", current=[]
        )
    current = counts / counts.sum()
    value = psi(reference, current)
    verdict: Verdict = (
        "drift"
        if value >= thresholds.psi_drift
        else "warn"
        if value >= thresholds.psi_warn
        else "ok"
    )
    return FeatureDrift(
        **base,
        psi=value,
        js_distance=js_distance(reference, current),
        verdict=verdict,
        current=[float(c) for c in current],
    )


def dataset_drift(
    profile: Mapping[str, Mapping[str, Any]],
    columns: Mapping[str, Sequence[Any]],
    thresholds: DriftThresholds = DriftThresholds(),
) -> DriftReport:
    """Every profiled column of ``columns`` (name -> the window's values), and the verdict:
    drift when at least ``drifted_share`` of the features drifted or any key feature did."""
    features = [
        feature_drift(name, profile[name], values, thresholds)
        for name, values in columns.items()
        if name in profile
    ]
    rows = max((f.rows for f in features), default=0)
    judged = [f for f in features if f.verdict != "insufficient data"]
    drifted = [f.name for f in judged if f.verdict == "drift"]
    if not judged:
        return DriftReport(
            rows,
            "insufficient data",
            [],
            features,
            [
                f"{rows} row(s) in the window; at least {thresholds.min_rows} "
                "non-null values per feature are needed for a verdict"
            ],
        )
    reasons = []
    keys = [name for name in drifted if name in thresholds.key_features]
    if keys:
        reasons.append(f"key feature(s) drifted: {', '.join(keys)}")
    share = len(drifted) / len(judged)
    if share >= thresholds.drifted_share:
        reasons.append(
            f"{len(drifted)} of {len(judged)} features drifted ({share:.0%} >= "
            f"{thresholds.drifted_share:.0%})"
        )
    warned = any(f.verdict in ("warn", "drift") for f in judged)
    verdict: Verdict = "drift" if reasons else "warn" if warned else "ok"
    return DriftReport(rows, verdict, drifted, features, reasons)
