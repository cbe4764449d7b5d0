"""Forecasts from a forecasting model: a series' history in, a value and quantiles per
future step out.

The history ends at the forecast's origin; each future step comes with its covariates known
in advance. The examples are built exactly as in training (:mod:`rayops.data.series`), so a
forecast reads nothing after its origin. Errors name what is wrong (an unknown series, a
history too short for the lags, a step off the grid) and are the caller's 422.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rayops.data.series import (
    TARGET,
    SeriesLayout,
    example_table,
    examples,
    off_grid,
    panel,
)
from rayops.data.validate import first_error, validate_records
from rayops.errors import DataError
from rayops.predict import Predictor


def layout_of(predictor: Predictor) -> SeriesLayout:
    """The layout a forecasting model was trained with (a DataError for another model)."""
    series = predictor.preprocessor.series
    if series is None:
        raise DataError(f"this is a {predictor.task} model: it does not forecast")
    return SeriesLayout.from_dict(series["layout"])


def series_key(layout: SeriesLayout, series: Mapping[str, Any] | None) -> list[Any]:
    """The series' column values, checked against the layout and the series it knows."""
    given = dict(series or {})
    missing = [s for s in layout.series if s not in given]
    extra = sorted(set(given) - set(layout.series))
    if missing or extra:
        named = ", ".join(layout.series) or "none: the model forecasts one series"
        raise DataError(
            f"series: expected the column(s) {named}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unknown {extra}" if extra else "")
        )
    values = [given[s] for s in layout.series]
    if layout.key(values) not in layout.levels:
        shown = ", ".join(f"{s}={v!r}" for s, v in zip(layout.series, values, strict=True))
        raise DataError(
            f"series: unknown series {shown}; the model knows {len(layout.levels)} series"
        )
    return values


def _typed(
    records: Sequence[Mapping[str, Any]], predictor: Predictor, columns: list[str], what: str
) -> pa.Table:
    specs = {n: predictor.schema[n] for n in columns}
    typed = validate_records(records, specs)
    bad = first_error(typed)
    if bad is not None:
        raise DataError(f"{what}[{bad[0]}]: {bad[1]}")
    return typed


@dataclass(frozen=True)
class Prepared:
    """One request's examples, ready for the model: what :func:`answer` needs."""

    examples: pa.Table
    level: float  # the series' level: outputs are multiplied by it
    steps: np.ndarray  # the forecast steps' timestamps (microseconds, UTC)


def prepare(
    predictor: Predictor,
    series: Mapping[str, Any] | None,
    history: Sequence[Mapping[str, Any]] | pa.Table,
    future: Sequence[Mapping[str, Any]],
) -> Prepared:
    """Check a forecast request and build its examples. ``history``: records as a request
    carries them, or typed observations of the series (the curated data)."""
    layout = layout_of(predictor)
    values = series_key(layout, series)
    if not future:
        raise DataError("future: give at least one step to forecast")
    if len(future) > layout.horizon:
        raise DataError(
            f"future: {len(future)} steps, the model forecasts at most "
            f"{layout.horizon} (its horizon)"
        )
    ts, label = layout.timestamp, layout.label
    past = (
        history
        if isinstance(history, pa.Table)
        else _typed(
            history,
            predictor,
            [ts, label, *[k for k in layout.known if any(k in r for r in history)]],
            "history",
        )
    )
    ahead = _typed(future, predictor, [ts, *layout.known], "future")
    for name, table in (("history", past), ("future", ahead)):
        off = np.flatnonzero(off_grid(table.column(ts), layout.step_s))
        if off.size:
            raise DataError(
                f"{name}[{off[0]}].{ts}: not on the model's grid of {layout.step_s} s steps"
            )
    return _prepared(layout, values, past, ahead)


def _prepared(layout: SeriesLayout, values: list[Any], past: pa.Table, ahead: pa.Table) -> Prepared:
    ts = layout.timestamp
    stamps = pc.cast(past.column(ts), pa.int64()).to_numpy(zero_copy_only=False)
    if not len(stamps):
        raise DataError(f"history: no observations; {layout.lookback} steps are needed")
    origin = int(stamps.max())
    span = (origin - int(stamps.min())) // layout.step_us + 1
    if span < layout.lookback:
        raise DataError(
            f"history: {span} step(s) up to {_iso(origin)}; the model reads "
            f"{layout.lookback} steps of history (its lags), give at least that"
        )
    if len(np.unique(stamps)) < len(stamps):
        raise DataError(f"history: two observations at the same {ts}")
    wanted = pc.cast(ahead.column(ts), pa.int64()).to_numpy(zero_copy_only=False)
    expected = origin + layout.step_us * np.arange(1, len(wanted) + 1)
    if not np.array_equal(wanted, expected):
        at = int(np.flatnonzero(wanted != expected)[0])
        raise DataError(
            f"future[{at}].{ts}: expected {_iso(int(expected[at]))}, the step "
            f"after the last one before it (history ends {_iso(origin)})"
        )
    rows = pa.concat_tables(
        [_observed(past, layout), _observed(ahead, layout)], promote_options="default"
    )
    p = panel(rows, layout)
    built = examples(p, values, np.array([len(p) - len(wanted) - 1]), len(wanted), layout)
    return Prepared(
        example_table(built, layout), layout.levels[layout.key(values)], np.asarray(built[TARGET])
    )


def answer(predictor: Predictor, requests: Sequence[Prepared]) -> list[list[dict[str, Any]]]:
    """The answers to prepared requests, from one transform and one model call for all
    (a replica's batch): per request, ``{"ts", "value", "quantiles"}`` per step."""
    pre = predictor.preprocessor
    table = pa.concat_tables([r.examples for r in requests])
    outputs = predictor.outputs(pre.transform(table))
    out, start = [], 0
    for r in requests:
        part = outputs[start : start + len(r.steps)] * r.level
        start += len(r.steps)
        out.append(
            [
                {"ts": _iso(int(t)), **a}
                for t, a in zip(r.steps, pre.rules.answers(part, pre.label_state), strict=True)
            ]
        )
    return out


def forecast(
    predictor: Predictor,
    series: Mapping[str, Any] | None,
    history: Sequence[Mapping[str, Any]] | pa.Table,
    future: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """One answer per future step: ``{"ts", "value", "quantiles"}``."""
    return answer(predictor, [prepare(predictor, series, history, future)])[0]


def _observed(rows: pa.Table, layout: SeriesLayout) -> pa.Table:
    """The observation columns a panel reads (nulls for what a part lacks)."""
    wanted = [layout.timestamp, layout.label, *layout.known]
    columns = {
        n: rows.column(n) if n in rows.column_names else pa.nulls(rows.num_rows) for n in wanted
    }
    return pa.table(
        {n: c if n != layout.label else pc.cast(c, pa.float64()) for n, c in columns.items()}
    )


def _iso(micros: int) -> str:
    return np.datetime_as_string(np.datetime64(micros, "us"), unit="s") + "Z"


def forecast_frame(predictor: Predictor, frame: pd.DataFrame) -> pd.DataFrame:
    """Forecasts for a frame of observations of one or more series (the MLflow model's
    input): per series, the rows with a label are its history and the rows without one
    the steps to forecast. One row per forecast step: the series' columns, the timestamp,
    ``value`` and ``p10``, ``p50``, ``p90``."""
    layout = layout_of(predictor)
    groups = frame.groupby(layout.series, sort=False) if layout.series else [((), frame)]
    out = []
    for values, rows in groups:
        named = values if isinstance(values, tuple) else (values,)
        series = dict(zip(layout.series, named, strict=True)) or None
        known = rows[layout.label].notna().to_numpy()
        records = rows.astype(object).where(rows.notna(), None).to_dict("records")
        history = [r for r, k in zip(records, known, strict=True) if k]
        future = [
            {n: v for n, v in r.items() if n != layout.label}
            for r, k in zip(records, known, strict=True)
            if not k
        ]
        for answer in forecast(predictor, series, history, future):
            quantiles = {f"p{round(float(q) * 100)}": v for q, v in answer["quantiles"].items()}
            out.append(
                {
                    **(series or {}),
                    layout.timestamp: answer["ts"],
                    "value": answer["value"],
                    **quantiles,
                }
            )
    return pd.DataFrame(out)


def step_records(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A forecast request as the prediction log keeps it: one record per future step, the
    series' columns and the step's timestamp and covariates (what monitoring compares with
    the training data, and what a step's feedback names by its index)."""
    series = dict(body.get("series") or {})
    return [{**series, **step} for step in body["future"]]
