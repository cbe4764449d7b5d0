"""Drift as Prometheus gauges, exported by Ray like every rayops metric (each node's
metrics export port): the operate loop sets them after each window it monitors."""

from __future__ import annotations

from typing import Any

from rayops.monitor.drift import VERDICT_CODES, DriftReport


class DriftGauges:
    """Created by the process that monitors (metrics must not be defined at import)."""

    def __init__(self) -> None:
        from ray.util import metrics

        self.psi = metrics.Gauge(
            "rayops_drift_psi",
            "Population stability index of a feature (or the "
            "predictions) in the last monitored window against the training reference.",
            tag_keys=("pipeline", "feature"),
        )
        self.js = metrics.Gauge(
            "rayops_drift_js_distance",
            "Jensen-Shannon distance of a feature in the last monitored window.",
            tag_keys=("pipeline", "feature"),
        )
        self.verdict = metrics.Gauge(
            "rayops_drift_verdict",
            "The last window's verdict: -1 insufficient data, 0 ok, "
            "1 warn, 2 drift (per feature, and 'all' for the window).",
            tag_keys=("pipeline", "feature"),
        )

    def set(self, pipeline: str, report: DriftReport) -> None:
        for feature in report.features:
            tags = {"pipeline": pipeline, "feature": feature.name}
            if feature.psi is not None:
                self.psi.set(feature.psi, tags=tags)
            if feature.js_distance is not None:
                self.js.set(feature.js_distance, tags=tags)
            self.verdict.set(VERDICT_CODES[feature.verdict], tags=tags)
        self.verdict.set(
            VERDICT_CODES[report.verdict], tags={"pipeline": pipeline, "feature": "all"}
        )


def drift_gauges() -> Any:
    """The gauges when Ray is connected (they export through it), else None."""
    import ray

    return DriftGauges() if ray.is_initialized() else None
