"""The operate loop's judgments, as pure functions of what the logs hold: whether to
retrain, whether a shadow may be promoted, whether a new champion must be rolled back."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from rayops.config import OperateConfig, RollbackConfig, ShadowGateConfig
from rayops.tasks import task_of

SERVED_ROLES = ("champion", "canary", "fallback")  # what clients got, a shadow's aside


@dataclass(frozen=True)
class Signals:
    """What one cycle saw. ``drift`` is the window's verdict (None: nothing served)."""

    drift: str | None
    drift_streak: int
    new_labels: int
    live_metric: float | None
    cycles_since_retrain: int


def decide(cfg: OperateConfig, metric: str, mode: str, signals: Signals) -> list[str]:
    """Why this cycle retrains; empty when it does not. Any one reason is enough."""
    reasons = []
    if signals.drift == "drift" and signals.drift_streak >= cfg.drift_windows:
        reasons.append(
            f"drift in {signals.drift_streak} consecutive window(s) "
            f"(operate.drift_windows: {cfg.drift_windows})"
        )
    if cfg.min_new_labels is not None and signals.new_labels >= cfg.min_new_labels:
        reasons.append(
            f"{signals.new_labels} new labelled records (operate.min_new_labels: "
            f"{cfg.min_new_labels})"
        )
    bound = cfg.min_live_metric
    if (
        bound is not None
        and signals.live_metric is not None
        and (signals.live_metric < bound if mode == "max" else signals.live_metric > bound)
    ):
        reasons.append(
            f"live_{metric.removeprefix('valid_')} {signals.live_metric:.4f} is "
            f"{'below' if mode == 'max' else 'above'} operate.min_live_metric "
            f"{bound}"
        )
    if cfg.retrain_every is not None and signals.cycles_since_retrain + 1 >= cfg.retrain_every:
        reasons.append(f"scheduled: every {cfg.retrain_every} cycle(s)")
    return reasons


@dataclass(frozen=True)
class ServedStats:
    """One model version's records in a window of the prediction log."""

    records: int
    errors: int
    p95_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.records if self.records else 0.0


@dataclass(frozen=True)
class ShadowStats:
    shadow: ServedStats
    champion_p95_ms: float | None
    compared: int  # mirrored records whose champion answer is in the log
    agreement: float | None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "error_rate": self.shadow.error_rate}


def _p95(rows: pd.DataFrame) -> float | None:
    """p95 of the requests' latencies (each request once, whatever its record count)."""
    per_request = rows.drop_duplicates("request_id")["latency_ms"].dropna()
    return float(np.percentile(per_request, 95)) if len(per_request) else None


def served_stats(rows: pd.DataFrame, version: str, roles: tuple[str, ...]) -> ServedStats:
    """Records, failed records and p95 latency of ``version`` answering as ``roles``."""
    mine = rows[(rows["model_version"] == version) & rows["role"].fillna("champion").isin(roles)]
    return ServedStats(len(mine), int(mine["error"].notna().sum()), _p95(mine))


def shadow_stats(rows: pd.DataFrame, version: str, task: str, tolerance: float) -> ShadowStats:
    """How the shadow ``version`` did on mirrored records, against the champion's answers to
    the same records (joined on request id and record index); whether two answers agree is
    the ``task``'s to say (within ``tolerance`` for a number)."""
    role = rows["role"].fillna("champion")
    shadow = rows[(role == "shadow") & (rows["model_version"] == version)]
    served = rows[role.isin(SERVED_ROLES) & rows["prediction"].notna()]
    keys = ["request_id", "record_index"]
    pairs = shadow[shadow["prediction"].notna()].merge(
        served[[*keys, "prediction"]].drop_duplicates(keys),
        on=keys,
        suffixes=("_shadow", "_champion"),
    )
    agree = task_of(task).agree
    agreed = [
        agree(json.loads(s), json.loads(c), tolerance)
        for s, c in zip(pairs["prediction_shadow"], pairs["prediction_champion"], strict=True)
    ]
    champion = served[served["request_id"].isin(set(shadow["request_id"]))]
    return ShadowStats(
        served_stats(rows, version, ("shadow",)),
        _p95(champion),
        len(pairs),
        float(np.mean(agreed)) if agreed else None,
    )


def shadow_verdict(cfg: ShadowGateConfig, stats: ShadowStats) -> tuple[bool, str]:
    """Whether the shadow may be promoted, and why (every bound named)."""
    s = stats.shadow
    if s.records < cfg.min_records:
        return False, (
            f"the shadow saw {s.records} mirrored record(s), fewer than "
            f"operate.shadow.min_records ({cfg.min_records})"
        )
    if s.error_rate > cfg.max_error_rate:
        return False, (
            f"the shadow failed on {s.error_rate:.1%} of mirrored records "
            f"({s.errors} of {s.records}), more than operate.shadow.max_error_rate "
            f"({cfg.max_error_rate:.1%})"
        )
    if s.p95_ms is not None and stats.champion_p95_ms:
        ratio = s.p95_ms / stats.champion_p95_ms
        if ratio > cfg.max_p95_latency_ratio:
            return False, (
                f"the shadow's p95 latency {s.p95_ms:.1f} ms is {ratio:.1f}x the "
                f"champion's {stats.champion_p95_ms:.1f} ms (operate.shadow."
                f"max_p95_latency_ratio: {cfg.max_p95_latency_ratio})"
            )
    if stats.agreement is None or stats.agreement < cfg.min_agreement:
        shown = "none compared" if stats.agreement is None else f"{stats.agreement:.1%}"
        return False, (
            f"the shadow agrees with the champion on {shown} of records, below "
            f"operate.shadow.min_agreement ({cfg.min_agreement:.0%})"
        )
    return True, (
        f"shadow ok on {s.records} mirrored records: {s.error_rate:.1%} errors, "
        f"agreement {stats.agreement:.1%}"
    )


def rollback_breach(cfg: RollbackConfig, stats: ServedStats) -> str | None:
    """Why a newly promoted champion must be rolled back; None while it holds up (or has
    not served enough records to tell)."""
    if stats.records < cfg.min_records:
        return None
    if stats.error_rate > cfg.max_error_rate:
        return (
            f"the new champion failed on {stats.error_rate:.1%} of served records "
            f"({stats.errors} of {stats.records}), more than operate.rollback."
            f"max_error_rate ({cfg.max_error_rate:.1%})"
        )
    if (
        cfg.max_p95_latency_ms is not None
        and stats.p95_ms is not None
        and stats.p95_ms > cfg.max_p95_latency_ms
    ):
        return (
            f"the new champion's p95 latency {stats.p95_ms:.1f} ms is over operate."
            f"rollback.max_p95_latency_ms ({cfg.max_p95_latency_ms})"
        )
    return None
