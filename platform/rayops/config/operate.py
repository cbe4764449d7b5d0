"""The operate section: when the loop retrains, and what a new model must show in shadow
before it is promoted and while it serves."""

from __future__ import annotations

from pydantic import Field

from rayops.config.base import _Section


class ShadowGateConfig(_Section):
    """What the challenger must show on mirrored traffic (``serve.mirror_fraction``) before
    promotion; a shadow that saw too little traffic in ``max_wait_s`` is not promoted."""

    enabled: bool = Field(True, description="Shadow the challenger before promoting it.")
    min_records: int = Field(200, ge=1, description="Mirrored records needed for a verdict.")
    max_wait_s: float = Field(3600.0, gt=0.0, description="Longest wait for them.")
    max_error_rate: float = Field(
        0.01, ge=0.0, le=1.0, description="Largest share of mirrored records it failed on."
    )
    max_p95_latency_ratio: float = Field(
        3.0,
        gt=0.0,
        description="Largest p95 latency (its model call) over the champion's "
        "(its requests in the replica) on the same requests: a bound for a much slower "
        "model, not a benchmark.",
    )
    min_agreement: float = Field(
        0.7,
        ge=0.0,
        le=1.0,
        description="Smallest share of mirrored records on which it "
        "agrees with the champion (same class; for regression within regression_tolerance).",
    )
    regression_tolerance: float = Field(
        0.1,
        ge=0.0,
        description="Relative difference within which two regression predictions agree.",
    )


class RollbackConfig(_Section):
    """After a promotion the loop watches the new champion's served traffic for
    ``watch_s``; a breach moves ``champion`` back to the previous version."""

    watch_s: float = Field(300.0, ge=0.0, description="How long to watch (0: not at all).")
    min_records: int = Field(20, ge=1, description="Served records needed for a verdict.")
    max_error_rate: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description="Largest share of records the new champion failed "
        "on (a failed record is answered by the previous champion).",
    )
    max_p95_latency_ms: float | None = Field(
        None, gt=0.0, description="Largest p95 latency of the new champion's requests."
    )


class OperateConfig(_Section):
    """The retraining loop (``rayops operate``): each cycle ingests, monitors, decides,
    retrains, gates, shadows, promotes and watches; one signal is enough to retrain."""

    interval_s: float = Field(3600.0, gt=0.0, description="Seconds between cycles.")
    window_hours: float = Field(
        24.0, gt=0.0, description="Served traffic (and labels) each cycle looks at."
    )
    drift_windows: int = Field(
        2, ge=1, description="Consecutive drifted windows before drift alone retrains."
    )
    min_new_labels: int | None = Field(
        1000,
        ge=1,
        description="Labelled records since the last retrain that retrain "
        "(null: labels alone never do).",
    )
    min_live_metric: float | None = Field(
        None,
        description="Retrain when the champion's live value of the gate metric "
        "(live_<metric>) is below this (above, for a metric to minimize).",
    )
    retrain_every: int | None = Field(
        None, ge=1, description="Retrain every N cycles whatever the signals (a schedule)."
    )
    sweep: bool = Field(False, description="Retrain with a sweep (the tune section).")
    window_min_labels: int = Field(
        100,
        ge=1,
        description="Labelled records of the window needed to gate on them too; "
        "fewer: the gate uses the validation rows only, and says so.",
    )
    window_tolerance: float = Field(
        0.0,
        ge=0.0,
        description="How much worse than the champion the challenger may be on "
        "the labelled window.",
    )
    shadow: ShadowGateConfig = Field(default_factory=ShadowGateConfig)
    rollback: RollbackConfig = Field(default_factory=RollbackConfig)
    lease_s: float = Field(
        900.0,
        gt=0.0,
        description="An operator's claim on the pipeline lasts this long "
        "unless renewed (a crashed operator's is taken over after it).",
    )
