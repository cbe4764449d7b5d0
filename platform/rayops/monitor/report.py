"""``rayops monitor``: a window of served records against the serving model's reference.

The reference is the profile of the dataset version the model (``champion`` by default)
trained on, so a model is always compared with its own training data. Records are checked
against that version's schema contract first (rejected ones are counted, not judged); a
``prediction`` column, when the records carry one, is compared with the label's profile.
The report is a table on screen, a JSON document and an HTML page with the reference and
current histograms of every feature, both logged to an MLflow run.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rayops import tracking
from rayops.config import ColumnSpec, PipelineConfig
from rayops.data.record_files import reading
from rayops.data.stats import numeric_columns
from rayops.data.validate import ERROR, validate_frame
from rayops.data.versions import load_version, version_number
from rayops.errors import DataError
from rayops.monitor.drift import (
    VERDICT_CODES,
    DriftReport,
    DriftThresholds,
    dataset_drift,
    thresholds_for,
)
from rayops.monitor.feedback import prediction_table
from rayops.serve.prediction_log import read_log
from rayops.tasks import task_of

logger = logging.getLogger(__name__)

PREDICTION = "prediction"


@dataclass(frozen=True)
class MonitorResult:
    model: tracking.RegisteredModel
    dataset: str
    rejected: int
    report: DriftReport
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": {
                "name": self.model.name,
                "version": self.model.version,
                "alias": self.model.alias,
                "run_id": self.model.run_id,
            },
            "dataset": self.dataset,
            "rejected_records": self.rejected,
            **self.report.to_dict(),
        }


def thresholds_of(cfg: PipelineConfig) -> DriftThresholds:
    return thresholds_for(cfg.monitor)


def read_records(path: Path, fmt: str) -> pd.DataFrame:
    """Records from a CSV, JSON Lines or Parquet file, nulls as None."""
    readers = {
        "csv": pd.read_csv,
        "json": lambda p: pd.read_json(p, lines=True),
        "parquet": pd.read_parquet,
    }
    if fmt not in readers:
        raise DataError(f"--format {fmt!r}: use one of {', '.join(readers)}")
    with reading(path, fmt, f"a {fmt} file"):
        frame = readers[fmt](path)
    return frame.astype(object).where(frame.notna(), None)


def read_window(cfg: PipelineConfig, hours: float) -> pd.DataFrame:
    """The records served in the last ``hours``, from the prediction log: one row per
    record, its feature columns plus ``prediction``, ``request_id``, ``record_index`` and
    ``model_version``."""
    location = prediction_table(cfg)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)
    rows = read_log(
        location,
        ["record", "prediction", "request_id", "record_index", "model_version", "role"],
        since,
    )
    if rows is None:
        raise DataError(
            f"no prediction log at {location.uri} yet: serve the model (with "
            "serve.log_predictions: true) or pass --records FILE"
        )
    # what clients got: a shadow's answers and failed records are not served traffic
    rows = rows.filter(
        pc.and_(
            pc.invert(pc.fill_null(pc.equal(rows["role"], "shadow"), False)),
            pc.is_valid(rows["prediction"]),
        )
    )
    frame = pd.DataFrame.from_records([json.loads(r) for r in rows["record"].to_pylist()])
    frame[PREDICTION] = [json.loads(p) for p in rows["prediction"].to_pylist()]
    for column in ("request_id", "record_index", "model_version"):
        frame[column] = rows[column].to_pylist()
    return frame.astype(object).where(frame.notna(), None)


def window_columns(
    records: pd.DataFrame,
    schema: dict[str, ColumnSpec],
    label: str,
    unmonitored: set[str] | frozenset[str] = frozenset(),
) -> tuple[dict[str, list[Any]], int]:
    """The window's values keyed as the profile keys them (datetime features by calendar
    part), and how many records the schema contract rejected; ``unmonitored`` columns are
    checked, not compared."""
    features = {n: s for n, s in schema.items() if n != label}
    missing = [n for n in features if n not in records.columns and n not in unmonitored]
    if missing:
        raise DataError(f"records lack the feature column(s) {missing}")
    features = {n: s for n, s in features.items() if n in records.columns}
    typed = validate_frame(records[list(features)], features)
    good = typed.filter(pc.is_null(typed.column(ERROR)))
    columns: dict[str, list[Any]] = {}
    for name, spec in features.items():
        if name in unmonitored:
            continue
        column = good.column(name)
        if spec.type in ("categorical", "text"):
            columns[name] = pc.cast(column, pa.string()).to_pylist()
        else:
            columns.update(
                (key, values.to_pylist()) for key, values in numeric_columns(name, spec, column)
            )
    if PREDICTION in records.columns:
        kept = pc.is_null(typed.column(ERROR)).to_numpy(zero_copy_only=False)
        columns[PREDICTION] = list(records[PREDICTION][kept])
    return columns, typed.num_rows - good.num_rows


def monitor_records(
    cfg: PipelineConfig, records: pd.DataFrame, alias: str = "champion", log: bool = True
) -> MonitorResult:
    """Drift of ``records`` against the training profile of the model ``alias`` names."""
    model = tracking.resolve_alias(cfg.tracking, cfg.model_name, alias)
    dataset = tracking.run_tags(cfg.tracking, model.run_id)[tracking.DATASET_TAG]
    version = load_version(cfg, version_number(dataset))
    schema = {n: ColumnSpec.model_validate(s) for n, s in version.manifest.columns.items()}
    profile = dict(version.manifest.profile)
    label = cfg.data.label
    if label in profile:
        profile[PREDICTION] = profile[label]  # predictions against the training labels
    task = task_of(cfg.data.task)
    columns, rejected = window_columns(
        task.served_records(records), schema, label, task.unmonitored(cfg.data)
    )
    report = dataset_drift(profile, columns, thresholds_of(cfg))
    result = MonitorResult(model, dataset, rejected, report)
    if log:
        result = MonitorResult(model, dataset, rejected, report, _log(cfg, result))
    return result


def _log(cfg: PipelineConfig, result: MonitorResult) -> str:
    run_id = tracking.start_run(
        cfg.tracking,
        cfg.experiment_name,
        f"{cfg.name}-monitor",
        params={
            "model_version": result.model.version,
            "dataset": result.dataset,
            "rows": result.report.rows,
            "monitor": cfg.monitor.model_dump(),
        },
        tags={tracking.KIND_TAG: "monitor", tracking.DRIFT_VERDICT_TAG: result.report.verdict},
    )
    metrics = {
        "drift_verdict": VERDICT_CODES[result.report.verdict],
        "rejected_records": float(result.rejected),
    }
    metrics |= {f"psi.{f.name}": f.psi for f in result.report.features if f.psi is not None}
    tracking.log_metrics(cfg.tracking, run_id, metrics, step=0)
    with tempfile.TemporaryDirectory(prefix="rayops-monitor-") as folder:
        for path in write_reports(result, Path(folder)):
            tracking.log_artifact(cfg.tracking, run_id, path, "drift")
    tracking.end_run(cfg.tracking, run_id)
    return run_id


def write_reports(result: MonitorResult, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    as_json = folder / "drift_report.json"
    as_json.write_text(json.dumps(result.to_dict(), indent=2))
    as_html = folder / "drift_report.html"
    as_html.write_text(html_report(result))
    return [as_json, as_html]


def table_lines(result: MonitorResult) -> list[str]:
    """The per-feature table shown on screen."""
    report = result.report
    lines = [
        f"{result.model.name} v{result.model.version} (@{result.model.alias}), trained "
        f"on {result.dataset}: {report.rows} record(s) judged, {result.rejected} "
        "rejected by the schema contract",
        f"{'feature':24s} {'verdict':18s} {'psi':>7s} {'js':>6s} {'nulls':>13s}",
    ]
    for f in report.features:
        psi = "-" if f.psi is None else f"{f.psi:.3f}"
        js = "-" if f.js_distance is None else f"{f.js_distance:.3f}"
        nulls = f"{f.reference_null_rate:.1%}->{f.null_rate:.1%}"
        lines.append(f"{f.name:24s} {f.verdict:18s} {psi:>7s} {js:>6s} {nulls:>13s}")
    reasons = f" ({'; '.join(report.reasons)})" if report.reasons else ""
    lines.append(f"verdict: {report.verdict}{reasons}")
    return lines


def _bars(bins: list[str], reference: list[float], current: list[float]) -> str:
    """Reference (grey) and current (blue) fractions per bin, as inline SVG."""
    width, height, top = 24 * max(len(bins), 1), 120, max([*reference, *current, 1e-9])
    parts = [f'<svg width="{width}" height="{height + 4}" role="img">']
    for i, name in enumerate(bins):
        for offset, values, colour in ((2, reference, "#999"), (12, current, "#2a6fdb")):
            if i < len(values):
                h = height * values[i] / top
                parts.append(
                    f'<rect x="{24 * i + offset}" y="{height - h:.1f}" width="9" '
                    f'height="{h:.1f}" fill="{colour}"><title>{html.escape(name)}: '
                    f"{values[i]:.3f}</title></rect>"
                )
    parts.append("</svg>")
    return "".join(parts)


def html_report(result: MonitorResult) -> str:
    rows = []
    for f in result.report.features:
        psi = "-" if f.psi is None else f"{f.psi:.3f}"
        rows.append(
            f"<tr><td>{html.escape(f.name)}</td><td class='{f.verdict.split()[0]}'>"
            f"{f.verdict}</td><td>{psi}</td><td>{f.null_rate:.1%}</td>"
            f"<td>{_bars(f.bins, f.reference, f.current)}</td></tr>"
        )
    heading = html.escape(table_lines(result)[0])
    return (
        "<!doctype html><meta charset='utf-8'><title>rayops drift report</title>"
        "<style>body{font-family:sans-serif}td{padding:4px 8px;vertical-align:bottom}"
        ".drift{color:#b00}.warn{color:#b60}.ok{color:#070}</style>"
        f"<h1>Drift: {html.escape(result.report.verdict)}</h1><p>{heading}</p>"
        f"<p>{html.escape('; '.join(result.report.reasons))}</p>"
        "<p>Bars: reference (grey) and this window (blue), per reference bin.</p>"
        "<table><tr><th>feature</th><th>verdict</th><th>PSI</th><th>nulls</th>"
        f"<th>histogram</th></tr>{''.join(rows)}</table>"
    )
