"""Forecasting without Ray: the forecast section, examples built point in time, the
metrics against the seasonal-naive forecast."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from rayops.config import DataConfig, validate_config
from rayops.data import series
from rayops.errors import ConfigError
from rayops.tasks.forecasting import LEVEL, NAIVE, SCALE, forecast_metrics, forecast_sums


def _data(**forecast) -> dict:
    return {
        "task": "forecasting",
        "label": "demand",
        "columns": {
            "ts": {"type": "datetime", "nullable": False},
            "zone": {"type": "categorical", "nullable": False},
            "temp": {"type": "numeric"},
            "demand": {"type": "numeric"},
        },
        "forecast": {
            "timestamp": "ts",
            "series": ["zone"],
            "known_in_advance": ["temp"],
            "validation": "1w",
            **forecast,
        },
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"forecast": None}, "needs a data.forecast section"),
        ({"columns.ts.nullable": True}, "'ts' must be declared datetime with nullable: false"),
        (
            {"forecast.known_in_advance": []},
            r"column\(s\) \['temp'\] are neither data.forecast.timestamp, series nor known_in_adv",
        ),
        ({"forecast.series": ["region"]}, "series 'region' is not a declared column"),
        ({"forecast.horizon": 200}, r"validation '1w' holds 168 step\(s\), fewer than one horizon"),
        ({"forecast.frequency": "5m"}, "'5m' is not a duration"),
        ({"forecast.validation": "90min"}, "not a whole number of '1h' steps"),
    ],
)
def test_the_forecast_section_names_what_is_wrong(change, message):
    raw = {"name": "t", "data": _data()}
    for key, value in change.items():
        *path, last = f"data.{key}".split(".")
        target = raw
        for part in path:
            target = target[part]
        target[last] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(raw)


def test_a_tabular_task_refuses_a_forecast_section():
    raw = {"name": "t", "data": {**_data(), "task": "regression"}}
    with pytest.raises(ConfigError, match="data.forecast applies to data.task 'forecasting'"):
        validate_config(raw)


@pytest.mark.parametrize(
    ("frequency", "season", "periods", "lookback"),
    [
        ("1h", 168, (24, 168), 168),
        ("30min", 336, (48, 336), 336),
        ("1d", 7, (7,), 7),
        ("1w", 52, (52,), 52),
    ],
)
def test_the_season_follows_the_frequency(frequency, season, periods, lookback):
    f = DataConfig.model_validate(_data(frequency=frequency, validation="60w", horizon=2)).forecast
    assert (f.season_steps, f.periods, f.lookback) == (season, periods, lookback)


def _observations(
    weeks: int = 4, zones: tuple[str, ...] = ("A", "B"), seed: int = 0
) -> pd.DataFrame:
    ts = pd.date_range("2024-01-01", periods=24 * 7 * weeks, freq="h", tz="UTC")
    rng = np.random.default_rng(seed)
    frames = [
        pd.DataFrame(
            {
                "ts": ts,
                "zone": z,
                "temp": rng.normal(20, 5, len(ts)),
                "demand": size * (1.5 + np.sin(2 * np.pi * ts.hour / 24))
                + rng.normal(0, 1, len(ts)),
            }
        )
        for z, size in zip(zones, (10.0, 100.0), strict=False)
    ]
    return pd.concat(frames, ignore_index=True)


def _layout(frame: pd.DataFrame, **forecast) -> series.SeriesLayout:
    data = DataConfig.model_validate(_data(**forecast))
    return series.fit_layout(pa.Table.from_pandas(frame, preserve_index=False), data)


def _features(table: pa.Table) -> pd.DataFrame:
    inputs = [c for c in table.column_names if c.startswith(series.PREFIX) or c in ("zone", "temp")]
    return table.select(inputs).to_pandas()


def test_no_example_reads_a_value_after_its_origin():
    frame = _observations()
    layout = _layout(frame)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    before = series.all_examples(table, layout, "valid")
    origins = before.column(series.ORIGIN).to_pandas()
    first = origins.min()
    assert origins.nunique() == 7 and len(before) == 2 * 7 * 24  # every held-out hour, once
    changed = frame.copy()
    later = changed["ts"] > first
    changed.loc[later, "demand"] = np.random.default_rng(1).uniform(0, 1e6, later.sum())
    after = series.all_examples(
        pa.Table.from_pandas(changed, preserve_index=False), layout, "valid"
    )
    same = (origins == first).to_numpy()
    pd.testing.assert_frame_equal(_features(before).loc[same], _features(after).loc[same])
    # the label is the value at the target step: it moved
    assert not np.allclose(
        before.column("demand").to_numpy()[same], after.column("demand").to_numpy()[same]
    )


def test_examples_are_the_series_values_and_calendar_at_each_step():
    frame = _observations()
    layout = _layout(frame)
    examples = series.all_examples(
        pa.Table.from_pandas(frame, preserve_index=False), layout, "valid"
    ).to_pandas()
    row = examples[(examples["zone"] == "B") & (examples["fx.ahead"] == 3)].iloc[0]
    values = frame[frame["zone"] == "B"].set_index("ts")["demand"]
    level = layout.levels['["B"]']
    origin, target = row[series.ORIGIN], row[series.TARGET]
    assert target == origin + pd.Timedelta(hours=3)
    assert row["demand"] * level == pytest.approx(values[target])
    assert row["fx.last_0"] * level == pytest.approx(values[origin])
    assert row["fx.same_24"] * level == pytest.approx(values[target - pd.Timedelta(days=1)])
    assert row[NAIVE] * level == pytest.approx(values[target - pd.Timedelta(weeks=1)])
    assert row["fx.mean_24"] * level == pytest.approx(
        values[origin - pd.Timedelta(hours=23) : origin].mean()
    )
    assert (row["fx.slot"], row["fx.weekday"]) == (str(target.hour), str(target.weekday()))
    # MASE's scale: the series' in-sample seasonal-naive MAE, before the validation period
    train = values[values.index < pd.Timestamp(layout.validation_start)]
    assert row[SCALE] == pytest.approx(np.abs(train.diff(168)).mean())
    assert row[LEVEL] == pytest.approx(np.abs(train).mean())


def test_a_missing_step_stays_missing():
    frame = _observations()
    gap = frame["ts"] == pd.Timestamp("2024-01-15T05:00", tz="UTC")
    layout = _layout(frame)
    table = pa.Table.from_pandas(frame[~gap], preserve_index=False)
    train = series.all_examples(table, layout, "train").to_pandas()
    missing = pd.Timestamp("2024-01-15T05:00", tz="UTC")
    assert not (train[series.TARGET] == missing).any()  # never a label
    reading = train[train[series.ORIGIN] == missing]
    assert len(reading) and reading["fx.last_0"].isna().all()  # read as missing, not 0


def test_validation_holds_out_the_last_period_and_training_stops_before_it():
    frame = _observations()
    layout = _layout(frame, origin_every=5)
    assert layout.validation_start == "2024-01-22T00:00:00+00:00"
    table = pa.Table.from_pandas(frame, preserve_index=False)
    train = series.all_examples(table, layout, "train").to_pandas()
    start = pd.Timestamp(layout.validation_start)
    assert train[series.TARGET].max() < start
    hours = train[series.ORIGIN].dt.hour.unique()
    assert len(hours) == 24  # every 5th hour still meets every hour of the day
    assert train[series.ORIGIN].min() >= frame["ts"].min() + pd.Timedelta(hours=167)


def test_metrics_against_the_seasonal_naive_forecast():
    actual = np.array([10.0, 20.0, 0.0, 40.0])
    quantiles = np.array([[8, 12, 14], [15, 18, 19], [0, 0, 1], [30, 50, 60]], dtype=float)
    naive = np.array([12.0, 10.0, 5.0, 40.0])
    scale = np.array([2.0, 2.0, 0.0, 4.0])  # a series with no in-sample error: no MASE
    m = forecast_metrics(forecast_sums(quantiles, actual, naive, scale))
    errors = np.array([2.0, 2.0, 0.0, 10.0])
    assert m["valid_mae"] == pytest.approx(errors.mean())
    assert m["valid_rmse"] == pytest.approx(np.sqrt(np.square(errors).mean()))
    assert m["valid_smape"] == pytest.approx(
        np.mean([200 * 2 / 22, 200 * 2 / 38, 0, 200 * 10 / 90])
    )
    assert m["valid_mase"] == pytest.approx((1 + 1 + 2.5) / 3)
    assert m["valid_naive_mae"] == pytest.approx((2 + 10 + 5 + 0) / 4)
    assert m["valid_coverage_80"] == pytest.approx(0.75)  # 20 is above [15, 19]
    assert m["valid_below_p50"] == pytest.approx(0.5)


def test_the_values_a_model_reads_share_one_scale():
    """Lags, each cycle's value and means are all values over the series' level, so they
    are scaled alike: a feature that barely varied in training (a week's mean over a short,
    steady history) does not blow up the network's input once it moves (on three weeks of
    taylor's half-hours, scaled one by one: MASE 11.5; alike: 1.5)."""
    from rayops.data.observations import fit_series

    frame = _observations(weeks=4)
    pre = fit_series(
        pa.Table.from_pandas(frame, preserve_index=False), DataConfig.model_validate(_data())
    )
    layout = series.SeriesLayout.from_dict(pre.series["layout"])
    states = {f["name"]: f for f in pre.features if f["name"] in layout.value_features}
    assert set(states) == set(layout.value_features) and "fx.mean_168" in states
    latest = states["fx.last_0"]
    for name, state in states.items():
        assert (state["mean"], state["std"]) == (latest["mean"], latest["std"]), name
    own = (
        series.all_examples(pa.Table.from_pandas(frame, preserve_index=False), layout, "train")
        .column("fx.mean_168")
        .to_numpy()
    )
    assert latest["std"] > 20 * np.nanstd(own)  # its own spread: 20 times narrower
