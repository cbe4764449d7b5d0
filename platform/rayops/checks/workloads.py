"""Behavioural checks of models that do not answer one record at a time: a forecaster
(observations of a series in, one value per future step out) and a recommender (a user's
interactions in, a top-k out).

Forecasting: minimum functionality gives history and future steps as records and bounds
every forecast value; invariance and directional checks perturb the future steps'
covariates (known in advance) of windows cut from the data at the start of the validation
period (a seeded sample of series: ``lookback`` observed steps, then ``horizon`` steps to
forecast), and judge each step's forecast. Recommendation: minimum functionality gives a
user's interactions as records and names an item that must be in their top ``k``."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa

from rayops.checks.behaviour import (
    broken,
    changed_values,
    directional_result,
    invariance_result,
    perturbed,
    plain,
)
from rayops.checks.results import CheckResult
from rayops.config.checks import DirectionalCheck, InvarianceCheck, MinimumCheck
from rayops.errors import DataError, PredictionError
from rayops.forecast import forecast_frame, layout_of
from rayops.predict import Predictor
from rayops.recommend import layout_of as interactions_of
from rayops.recommend import recommend_frame

FAILS = (DataError, PredictionError, ValueError, KeyError)


def forecast_minimum(predictor: Predictor, check: MinimumCheck, examples: int) -> CheckResult:
    """Every forecast step of the records' series within the expected range."""
    try:
        answers = forecast_frame(predictor, pd.DataFrame(check.records))
    except FAILS as exc:
        return broken("minimum", check.name, exc)
    low = -math.inf if check.expect_min is None else check.expect_min
    high = math.inf if check.expect_max is None else check.expect_max
    outside = answers[(answers["value"] < low) | (answers["value"] > high)]
    shown = [
        {k: plain(v) for k, v in row.items()} for row in outside.head(examples).to_dict("records")
    ]
    detail = (
        f"{len(answers) - len(outside)} of {len(answers)} forecast step(s) in "
        f"[{check.expect_min}, {check.expect_max}]"
    )
    return CheckResult("minimum", check.name, outside.empty and not answers.empty, detail, shown)


def recommend_minimum(predictor: Predictor, check: MinimumCheck, examples: int) -> CheckResult:
    """``expect_in_top_k`` among each of the records' users' top ``k``."""
    try:
        answers = recommend_frame(predictor, pd.DataFrame(check.records))
    except FAILS as exc:
        return broken("minimum", check.name, exc)
    user = interactions_of(predictor).user
    users = sorted({str(r[user]) for r in check.records if user in r})
    missing = []
    for name in users:
        top = answers[(answers[user].astype(str) == name) & (answers["rank"] <= check.k)]
        if str(check.expect_in_top_k) not in set(top["item"].astype(str)):
            missing.append({user: name, "top": top["item"].astype(str).tolist()})
    detail = (
        f"{check.expect_in_top_k!r} in the top {check.k} of {len(users) - len(missing)} "
        f"of {len(users)} user(s)"
    )
    return CheckResult(
        "minimum", check.name, bool(users) and not missing, detail, missing[:examples]
    )


def windows(
    predictor: Predictor, rows: pa.Table, count: int, rng: np.random.Generator
) -> pd.DataFrame:
    """Up to ``count`` series' windows at the start of the validation period: each its
    last ``lookback`` observed steps before it, then ``horizon`` steps without the label
    (the steps to forecast). Series whose steps there are not contiguous are left out."""
    layout = layout_of(predictor)
    frame = rows.to_pandas()
    ts = pd.to_datetime(frame[layout.timestamp], utc=True)
    start = pd.Timestamp(layout.validation_start)
    step = pd.Timedelta(seconds=layout.step_s)
    groups = (
        list(frame.assign(_ts=ts).groupby(layout.series, sort=True))
        if layout.series
        else [((), frame.assign(_ts=ts))]
    )
    picked = []
    for i in rng.permutation(len(groups)):
        rows_of = groups[int(i)][1].sort_values("_ts")
        past = rows_of[rows_of["_ts"] < start].tail(layout.lookback)
        ahead = rows_of[rows_of["_ts"] >= start].head(layout.horizon).copy()
        if len(past) < layout.lookback or len(ahead) < layout.horizon:
            continue
        wanted = past["_ts"].iloc[-1] + step * np.arange(1, layout.horizon + 1)
        if not (pd.DatetimeIndex(ahead["_ts"]) == pd.DatetimeIndex(wanted)).all():
            continue
        ahead[layout.label] = None
        picked.append(pd.concat([past, ahead]).drop(columns="_ts"))
        if len(picked) >= count:
            break
    if not picked:
        raise DataError(
            "no series has contiguous steps around the start of the validation "
            f"period ({layout.validation_start}) to cut a window from"
        )
    return pd.concat(picked, ignore_index=True)


def _future(frame: pd.DataFrame, label: str) -> np.ndarray:
    return frame[label].isna().to_numpy()


def _values(predictor: Predictor, frame: pd.DataFrame) -> np.ndarray:
    return forecast_frame(predictor, frame)["value"].to_numpy(dtype=float)


def forecast_invariance(
    predictor: Predictor,
    check: InvarianceCheck,
    frame: pd.DataFrame,
    rng: np.random.Generator,
    examples: int,
) -> CheckResult:
    """The future steps' covariates perturbed: no step's forecast may move beyond the
    tolerance (in the label's units)."""
    future = _future(frame, layout_of(predictor).label)
    try:
        changed = frame.copy()
        changed.loc[future, check.columns] = perturbed(frame.loc[future], check, rng)[
            check.columns
        ].to_numpy()
        moved = np.abs(_values(predictor, changed) - _values(predictor, frame))
    except FAILS as exc:
        return broken("invariance", check.name, exc)
    return invariance_result(
        check, moved, changed.loc[future].reset_index(drop=True), examples, unit="forecast step"
    )


def forecast_directional(
    predictor: Predictor, check: DirectionalCheck, frame: pd.DataFrame, examples: int
) -> CheckResult:
    """The future steps' covariate changed: the forecasts must move the expected way."""
    future = _future(frame, layout_of(predictor).label)
    try:
        changed = frame.copy()
        changed[check.column] = changed[check.column].astype(object)
        changed.loc[future, check.column] = list(
            changed_values(frame.loc[future, check.column], check)
        )
        delta = _values(predictor, changed) - _values(predictor, frame)
    except FAILS as exc:
        return broken("directional", check.name, exc)
    return directional_result(
        check,
        delta,
        frame.loc[future].reset_index(drop=True),
        changed.loc[future].reset_index(drop=True),
        "the forecast",
        examples,
        unit="forecast step",
    )
