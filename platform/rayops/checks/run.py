"""Running a config's checks on one model and one dataset version (``rayops check``, and
the gate before it lets a challenger through), and recording what they found."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from rayops import tracking
from rayops.checks import behaviour, workloads
from rayops.checks.results import CheckReport, CheckResult
from rayops.checks.slices import slice_check
from rayops.config import PipelineConfig
from rayops.data.versions import DatasetVersion, load_version, version_number
from rayops.monitor.drift import dataset_drift, thresholds_for
from rayops.predict import Predictor

logger = logging.getLogger(__name__)

JUNIT = "checks.xml"
MARKDOWN = "checks.md"


def run_checks(
    cfg: PipelineConfig,
    predictor: Predictor,
    version: DatasetVersion,
    model: str,
    champion: Predictor | None = None,
    champion_dataset: str | None = None,
    rows: pa.Table | None = None,
) -> CheckReport:
    """Every declared check of ``cfg.checks`` on ``predictor`` and ``version``'s validation
    rows (``rows`` when the caller read them already): behavioural checks on a seeded
    sample, slices on all of them (against ``champion`` when it can be scored on them),
    then the data checks."""
    checks = cfg.checks
    results: list[CheckResult] = []
    rows = version.scored_rows() if rows is None else rows
    if checks.minimum or checks.invariance or checks.directional:
        results += behavioural(cfg, predictor, rows)
    directions = cfg.metrics
    for check in checks.slices:
        metric = check.metric or cfg.gate_metric[0]
        results.append(
            slice_check(
                predictor, champion, check, rows, metric, directions[metric], checks.examples
            )
        )
    results += data_checks(cfg, version, champion_dataset)
    report = CheckReport(model, version.id, results)
    logger.info("checks of %s on %s: %s", model, version.id, report.summary())
    return report


def behavioural(cfg: PipelineConfig, predictor: Predictor, rows: pa.Table) -> list[CheckResult]:
    """Minimum, invariance and directional checks, by what the model answers: records
    (tabular), forecast steps of windows cut from the rows, or a user's top k."""
    checks, n = cfg.checks, cfg.checks.examples
    rng = np.random.default_rng(cfg.data.seed)
    pre = predictor.preprocessor
    if pre.interactions is not None:
        return [workloads.recommend_minimum(predictor, c, n) for c in checks.minimum]
    if pre.series is not None:
        out = [workloads.forecast_minimum(predictor, c, n) for c in checks.minimum]
        if checks.invariance or checks.directional:
            horizon = workloads.layout_of(predictor).horizon
            frame = workloads.windows(predictor, rows, max(1, checks.sample_rows // horizon), rng)
            out += [
                workloads.forecast_invariance(predictor, c, frame, rng, n)
                for c in checks.invariance
            ]
            out += [
                workloads.forecast_directional(predictor, c, frame, n) for c in checks.directional
            ]
        return out
    picked = np.sort(
        rng.choice(rows.num_rows, min(checks.sample_rows, rows.num_rows), replace=False)
    )
    frame = rows.take(picked).to_pandas()[predictor.features].reset_index(drop=True)
    return (
        [behaviour.minimum(predictor, c, n) for c in checks.minimum]
        + [behaviour.invariance(predictor, c, frame, rng, n) for c in checks.invariance]
        + [behaviour.directional(predictor, c, frame, n) for c in checks.directional]
    )


def data_checks(
    cfg: PipelineConfig, version: DatasetVersion, champion_dataset: str | None
) -> list[CheckResult]:
    """The version's quarantine share, and how many features drifted from the dataset
    the champion trained on (not judged without one)."""
    wanted = cfg.checks.data
    out = []
    rows = version.manifest.rows
    if wanted.max_quarantine_fraction is not None:
        share = rows.quarantine / rows.read if rows.read else 0.0
        out.append(
            CheckResult(
                "data",
                "quarantine share",
                share <= wanted.max_quarantine_fraction,
                f"{rows.quarantine} of {rows.read} row(s) quarantined ({share:.2%}; at most "
                f"{wanted.max_quarantine_fraction:.2%})",
            )
        )
    if wanted.max_drifted_features is not None:
        out.append(_drift(cfg, version, champion_dataset, wanted.max_drifted_features))
    return out


def _drift(
    cfg: PipelineConfig, version: DatasetVersion, champion_dataset: str | None, allowed: int
) -> CheckResult:
    name = "drift from the champion's training data"
    if champion_dataset is None or champion_dataset == version.id:
        return CheckResult(
            "data", name, True, "not judged: no champion trained on another dataset version"
        )
    reference = load_version(cfg, version_number(champion_dataset))
    train = version.table("train", limit=5000)
    features = [f for f in cfg.data.feature_names if f in train.column_names]
    report = dataset_drift(
        reference.manifest.profile,
        {f: train.column(f).to_pylist() for f in features},
        thresholds_for(cfg.monitor),
    )
    drifted = report.drifted
    return CheckResult(
        "data",
        name,
        len(drifted) <= allowed,
        f"{len(drifted)} of {len(features)} feature(s) drifted from "
        f"{champion_dataset}{': ' + ', '.join(drifted) if drifted else ''} "
        f"(at most {allowed})",
        [
            {"feature": f.name, "psi": None if f.psi is None else round(f.psi, 4)}
            for f in report.features
            if f.name in drifted
        ][: cfg.checks.examples],
    )


def record(cfg: PipelineConfig, report: CheckReport, run_id: str | None) -> None:
    """Log the JUnit and Markdown reports as artifacts of the model's run (``checks/``)."""
    if not run_id:
        return
    with tempfile.TemporaryDirectory(prefix="rayops-checks-") as tmp:
        for name, text in ((JUNIT, report.junit()), (MARKDOWN, report.markdown())):
            path = Path(tmp) / name
            path.write_text(text)
            tracking.log_artifact(cfg.tracking, run_id, path, "checks")


def failed_reason(report: CheckReport) -> str:
    """What the gate records when a challenger fails its checks."""
    return "failed check(s): " + "; ".join(f"{r.title} ({r.detail})" for r in report.failed)
