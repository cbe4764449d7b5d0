"""True labels that arrive after the prediction, and the live metrics they give.

Labels come from ``POST /feedback`` on the served API (batched off the request path, like
the prediction log) or in bulk from ``rayops feedback CONFIG FILE``; both append to
``{storage.root}/feedback/{pipeline}``. A label names the request (its X-Request-ID) and the
record's place in it. Joined with the prediction log on those two keys (the newest label
wins when one is sent twice), they give each model version's metrics on live traffic:
accuracy, precision, recall and F1, or RMSE, MAE and R², with how many labelled records
they rest on.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rayops.config import ColumnSpec, PipelineConfig
from rayops.data.validate import ERROR, validate_records
from rayops.errors import DataError
from rayops.serve.prediction_log import (
    FEEDBACK_SCHEMA,
    append_rows,
    feedback_row,
    log_locations,
    read_log,
)
from rayops.storage import Location, root_of
from rayops.tasks import task_of

logger = logging.getLogger(__name__)


def prediction_table(cfg: PipelineConfig) -> Location:
    """Where Serve's replicas append what they served (``serve.prediction_log``)."""
    return log_locations(root_of(cfg.storage), cfg.name)[0]


def feedback_table(cfg: PipelineConfig) -> Location:
    return log_locations(root_of(cfg.storage), cfg.name)[1]


def append_feedback(cfg: PipelineConfig, labels: pd.DataFrame) -> int:
    """Append labels (columns ``request_id``, ``label``, optional ``record_index``); every
    row is checked first, so a bad file appends nothing. Returns the rows appended."""
    missing = {"request_id", "label"} - set(labels.columns)
    if missing:
        raise DataError(
            f"feedback lacks the column(s) {sorted(missing)}; it needs "
            "request_id, label and optionally record_index"
        )
    now = dt.datetime.now(dt.UTC)
    task = task_of(cfg.data.task)
    rows = []
    for line, item in enumerate(labels.to_dict("records"), start=1):
        request_id, label = item.get("request_id"), item.get("label")
        index = item.get("record_index")
        if request_id is None or not str(request_id).strip():
            raise DataError(f"feedback row {line}: request_id is empty")
        if label is None or (isinstance(label, float) and not np.isfinite(label)):
            raise DataError(f"feedback row {line} ({request_id}): label is missing (got {label!r})")
        if task.true_label(_plain(label)) is None:
            raise DataError(
                f"feedback row {line} ({request_id}): label {label!r} is not a "
                f"number, which a {cfg.data.task} model's labels are"
            )
        try:
            index = 0 if index is None else int(index)
        except (TypeError, ValueError):
            raise DataError(
                f"feedback row {line} ({request_id}): record_index {index!r} is not an integer"
            ) from None
        rows.append(feedback_row(str(request_id), index, _plain(label), now))
    if not rows:
        return 0
    append_rows(feedback_table(cfg), rows, FEEDBACK_SCHEMA)
    return len(rows)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def read_frame(
    location: Location, columns: list[str], since: dt.datetime | None = None
) -> pd.DataFrame:
    """:func:`read_log` as a DataFrame; empty (with the columns) before the first append."""
    rows = read_log(location, columns, since)
    if rows is None:  # nothing served (or labelled) yet
        return pd.DataFrame(columns=[*columns, "time"])
    return rows.to_pandas()


_KEYS = ["request_id", "record_index"]  # what a label names: the request and the record


def _labelled(cfg: PipelineConfig, columns: list[str], since: dt.datetime | None) -> pd.DataFrame:
    """Served records (``columns`` of the log, since ``since``) that have a true label,
    joined with the newest label sent for each; records the model failed on are left out."""
    served = read_frame(prediction_table(cfg), [*_KEYS, *columns], since)
    served = served[served["prediction"].notna()]
    labels = read_frame(feedback_table(cfg), [*_KEYS, "label"])
    labels = labels.sort_values("time").drop_duplicates(_KEYS, keep="last")
    return served.drop(columns="time").merge(labels.drop(columns="time"), on=_KEYS)


def live_metrics(cfg: PipelineConfig, hours: float | None = None) -> dict[str, dict[str, float]]:
    """Each served model version's metrics on the labelled records of the window (all
    time when ``hours`` is None), keyed by version."""
    since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours) if hours else None
    joined = _labelled(cfg, ["model_version", "prediction"], since)
    task = task_of(cfg.data.task)
    joined["label"] = [task.true_label(json.loads(a)) for a in joined["label"]]
    unusable = joined["label"].isna()
    if unusable.any():  # a label that cannot be this task's: left out, never a crash
        logger.warning(
            "%d label(s) of %s are not %s labels and are left out of the live "
            "metrics (e.g. request %s)",
            int(unusable.sum()),
            cfg.name,
            cfg.data.task,
            joined.loc[unusable, "request_id"].iloc[0],
        )
        joined = joined[~unusable]
    out = {}
    for version, rows in joined.groupby("model_version"):
        predicted = [json.loads(p) for p in rows["prediction"]]
        actual = list(rows["label"])
        out[str(version)] = {
            "labelled": float(len(rows)),
            **task.live_metrics(predicted, actual, cfg.data.columns[cfg.data.label].values),
        }
    return out


def labelled_window(cfg: PipelineConfig, schema: dict[str, ColumnSpec], hours: float) -> pa.Table:
    """The served records of the last ``hours`` that have a true label, typed by
    ``schema`` (features and label), one row per record: what the gate scores a challenger
    and the champion on, beside the validation rows. Records the schema rejects are left
    out."""
    since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)
    joined = _labelled(cfg, ["record", "prediction", "role"], since)
    joined = joined[joined["role"].fillna("champion") != "shadow"].drop_duplicates(_KEYS)
    label = cfg.data.label
    records = [
        {**json.loads(r), label: json.loads(v)}
        for r, v in zip(joined["record"], joined["label"], strict=True)
    ]
    typed = validate_records(records, schema, label)
    return typed.filter(pc.is_null(typed.column(ERROR))).drop_columns([ERROR])
