"""Observations of series -> forecasting examples, every feature computed point in time.

A forecasting dataset's curated rows are observations: the series' columns, a timestamp,
the label and the covariates known in advance. Models do not learn from them directly.
Each series is laid on its grid of steps (a missing step stays missing, nothing is
invented), and each forecast origin ``t`` gives one example per step ``h`` ahead
(1..horizon), for the target step ``t + h``:

- ``fx.ahead``: ``h``;
- ``fx.last_j``: the value ``j`` steps before the origin (j < ``lags``);
- ``fx.same_P``: for each cycle of ``P`` steps (a day, a season), the value at the target's
  phase in the latest cycle known at the origin (``t + h - P * ceil(h / P)``);
- ``fx.mean_P``: the mean of the ``P`` values up to the origin;
- ``fx.phase_P``: the mean of the values at the target's phase over the cycles of ``P`` the
  history holds (the same hour on each of the last seven days);
- ``fx.slot``, ``fx.weekday``, ``fx.month``: calendar features of the target step;
- the covariates known in advance, at the target step; the series' own columns.

Values are divided by the series' level (its mean over the training period), so one global
model learns series of any size. No feature reads a value after its origin; the label is the
value at the target step. Training examples have their target before the validation period;
validation examples start from origins every ``horizon`` steps inside it, each seeing only
the data up to its origin, as a forecast in production would.
"""

from __future__ import annotations

import datetime as dt
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rayops.config import DataConfig
from rayops.config.forecast import DAY_S, WEEK_S
from rayops.data.validate import ARROW_TYPES
from rayops.errors import DataError
from rayops.tasks.forecasting import LEVEL, NAIVE, SCALE

PREFIX = "fx."
ORIGIN, TARGET = "_origin", "_ts"  # when each example was forecast, and for when
# Observations handed to scoring carry the start of the period they are scored on.
VALIDATION_KEY = b"rayops.validation_start"
_US = 1_000_000
# Grids are anchored on a Monday, so weekly steps fall on Mondays (hours and days on the
# hour and at midnight UTC, as from the epoch).
ANCHOR_US = int(dt.datetime(1970, 1, 5, tzinfo=dt.UTC).timestamp()) * _US
_TS = ARROW_TYPES["datetime"]


@dataclass(frozen=True)
class SeriesLayout:
    """How one version's observations become examples: the forecast section, resolved,
    and what was fitted on the training period (JSON; saved with the data and the model)."""

    timestamp: str
    series: list[str]
    label: str
    known: dict[str, str]  # covariate known in advance -> its declared type
    step_s: int
    horizon: int
    season: int
    periods: list[int]
    lags: int
    origin_every: int
    validation_start: str  # ISO 8601, UTC: the first step held out
    levels: dict[str, float]  # series key -> mean over the training period
    scales: dict[str, float]  # series key -> in-sample seasonal-naive MAE (0: none)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> SeriesLayout:
        return cls(**dict(state))

    @property
    def lookback(self) -> int:
        """Steps of history a forecast reads, the origin included."""
        return max(*self.periods, self.lags)

    @property
    def step_us(self) -> int:
        return self.step_s * _US

    @property
    def calendar(self) -> list[str]:
        if self.step_s < DAY_S:
            return ["slot", "weekday"]
        return ["weekday", "month"] if self.step_s < WEEK_S else ["month"]

    @property
    def validation_us(self) -> int:
        return _micros(self.validation_start)

    def key(self, values: Sequence[Any]) -> str:
        """A series' key: its columns' values as text ('' for the one series)."""
        return json.dumps([str(v) for v in values]) if self.series else ""

    def feature_specs(self) -> dict[str, dict[str, Any]]:
        """The columns of an example a model reads, with their types (ColumnSpec fields)."""
        specs: dict[str, dict[str, Any]] = {s: {"type": "categorical"} for s in self.series}
        specs |= {f"{PREFIX}{part}": {"type": "categorical"} for part in self.calendar}
        specs[f"{PREFIX}ahead"] = {"type": "integer"}
        for name in self.value_features:
            specs[name] = {"type": "numeric"}
        for name, kind in self.known.items():
            specs[name] = {"type": "categorical" if kind in ("categorical", "text") else "numeric"}
        return specs

    @property
    def value_features(self) -> list[str]:
        found = [f"{PREFIX}last_{j}" for j in range(self.lags)]
        for p in self.periods:
            found += [f"{PREFIX}same_{p}", f"{PREFIX}mean_{p}"]
            found += [f"{PREFIX}phase_{p}"] if self.lookback // p > 1 else []
        return found


def _micros(iso: str) -> int:
    return int(pd.Timestamp(iso).value // 1000)


def _iso(micros: int) -> str:
    return dt.datetime.fromtimestamp(micros / _US, dt.UTC).isoformat()


def off_grid(stamps: pa.ChunkedArray, step_s: int) -> np.ndarray:
    """Rows whose timestamp does not fall on the grid of ``step_s`` steps."""
    micros = pc.cast(stamps, pa.int64()).to_numpy(zero_copy_only=False)
    return np.asarray((micros - ANCHOR_US) % (step_s * _US) != 0)


# --------------------------------------------------------------------------- one series


@dataclass(frozen=True)
class Panel:
    """One series on its grid: the first step, the values (NaN where missing) and the
    known covariates (NaN / None where missing)."""

    start_us: int
    values: np.ndarray
    known: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.values)

    def index_of(self, micros: int) -> int:
        return (micros - self.start_us) // self.step_us

    step_us: int = 0


def panel(rows: pa.Table, layout: SeriesLayout) -> Panel:
    """One series' observations (any order, on the grid, one per step) on its grid."""
    micros = pc.cast(rows.column(layout.timestamp), pa.int64()).to_numpy(zero_copy_only=False)
    if not len(micros):
        return Panel(0, np.zeros(0), {k: np.zeros(0) for k in layout.known}, layout.step_us)
    start = int(micros.min())
    index = (micros - start) // layout.step_us
    if len(np.unique(index)) < len(index):
        raise DataError(f"two observations of one series at the same {layout.timestamp}")
    size = int(index.max()) + 1
    values = np.full(size, np.nan)
    values[index] = _floats(rows.column(layout.label))
    known: dict[str, np.ndarray] = {}
    for name, kind in layout.known.items():
        column = rows.column(name)
        if kind in ("categorical", "text"):
            known[name] = np.full(size, None, dtype=object)
            known[name][index] = np.asarray(pc.cast(column, pa.string()).to_pylist(), dtype=object)
        else:
            known[name] = np.full(size, np.nan)
            known[name][index] = _floats(pc.cast(column, pa.float64()))
    return Panel(start, values, known, layout.step_us)


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)


def _at(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``values[index]``, NaN outside the array."""
    inside = (index >= 0) & (index < len(values))
    out = np.full(len(index), np.nan)
    out[inside] = values[index[inside]]
    return out


def _window_means(values: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """Mean of the known values among the ``width`` up to each end (NaN when none is)."""
    known = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(known, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(known)])
    starts = np.maximum(ends - width + 1, 0)
    n = counts[ends + 1] - counts[starts]
    total = sums[ends + 1] - sums[starts]
    return np.divide(total, n, out=np.full(len(ends), np.nan), where=n > 0)


def _calendar(micros: np.ndarray, layout: SeriesLayout) -> dict[str, list[str]]:
    stamps = pd.to_datetime(micros, unit="us", utc=True)
    parts = {
        "slot": (stamps.hour * 3600 + stamps.minute * 60 + stamps.second) // layout.step_s,
        "weekday": stamps.day_of_week,
        "month": stamps.month,
    }
    return {f"{PREFIX}{p}": [str(v) for v in parts[p]] for p in layout.calendar}


def examples(
    p: Panel, series_values: Sequence[Any], origins: np.ndarray, steps: int, layout: SeriesLayout
) -> dict[str, Any]:
    """Columns of the examples of ``origins`` (grid indices) for steps 1..``steps``."""
    key = layout.key(series_values)
    level = layout.levels[key]
    o = np.repeat(origins.astype(np.int64), steps)
    h = np.tile(np.arange(1, steps + 1, dtype=np.int64), len(origins))
    target = o + h
    y = p.values / level
    out: dict[str, Any] = {
        name: [str(v)] * len(o) for name, v in zip(layout.series, series_values, strict=True)
    }
    out |= _calendar(p.start_us + target * layout.step_us, layout)
    out[f"{PREFIX}ahead"] = h
    for j in range(layout.lags):
        out[f"{PREFIX}last_{j}"] = _at(y, o - j)
    for period in layout.periods:
        latest = target - period * -(-h // period)  # the target's phase, latest cycle
        out[f"{PREFIX}same_{period}"] = _at(y, latest)
        out[f"{PREFIX}mean_{period}"] = _window_means(y, o, period)
        cycles = layout.lookback // period
        if cycles > 1:  # the phase's mean over the cycles the history holds
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all missing: NaN
                out[f"{PREFIX}phase_{period}"] = np.nanmean(
                    [_at(y, latest - period * k) for k in range(cycles)], axis=0
                )
    for name, values in p.known.items():
        out[name] = (
            list(_at_objects(values, target)) if values.dtype == object else _at(values, target)
        )
    out[layout.label] = _at(y, target)
    out[LEVEL] = np.full(len(o), level)
    out[NAIVE] = _at(y, target - layout.season * -(-h // layout.season))
    out[SCALE] = np.full(len(o), layout.scales[key])
    out[ORIGIN] = p.start_us + o * layout.step_us
    out[TARGET] = p.start_us + target * layout.step_us
    return out


def _at_objects(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    inside = (index >= 0) & (index < len(values))
    out = np.full(len(index), None, dtype=object)
    out[inside] = values[index[inside]]
    return out


def origins_of(p: Panel, layout: SeriesLayout, split: str) -> np.ndarray:
    """The grid indices forecasts start from: training origins (every ``origin_every``-th
    step, with a target before the validation period) or validation origins (every
    ``horizon`` steps from the step before it). Every origin has ``lookback`` steps of
    history behind it."""
    first = layout.lookback - 1
    held = -(-(layout.validation_us - p.start_us) // layout.step_us)  # first held-out index
    if split == "train":
        found = np.arange(first, min(held - 1, len(p) - 1))
        phase = (p.start_us - ANCHOR_US) // layout.step_us + found
        return found[phase % layout.origin_every == 0]
    found = np.arange(held - 1, len(p) - 1, layout.horizon)
    return found[found >= first]


def series_examples(rows: pa.Table, layout: SeriesLayout, split: str) -> pa.Table:
    """The ``split`` examples of one series' observations (those the level is known for)."""
    if not rows.num_rows:
        return empty_examples(layout)
    values = [rows.column(s)[0].as_py() for s in layout.series]
    if layout.key(values) not in layout.levels:
        return empty_examples(layout)
    p = panel(rows, layout)
    columns = examples(p, values, origins_of(p, layout, split), layout.horizon, layout)
    table = example_table(columns, layout)
    target = pc.cast(table.column(TARGET), pa.int64())
    label = table.column(layout.label)
    keep = pc.is_valid(pc.if_else(pc.is_nan(label), None, label))
    if split == "train":
        keep = pc.and_(keep, pc.less(target, layout.validation_us))
    else:
        naive = table.column(NAIVE)
        keep = pc.and_(keep, pc.invert(pc.is_nan(naive)))
        keep = pc.and_(keep, pc.greater_equal(target, layout.validation_us))
    return table.filter(keep)


def example_schema(layout: SeriesLayout) -> pa.Schema:
    fields = []
    for name, spec in layout.feature_specs().items():
        kind = spec["type"]
        fields.append(
            (
                name,
                pa.string()
                if kind == "categorical"
                else pa.int64()
                if kind == "integer"
                else pa.float64(),
            )
        )
    fields += [
        (layout.label, pa.float64()),
        (LEVEL, pa.float64()),
        (NAIVE, pa.float64()),
        (SCALE, pa.float64()),
        (ORIGIN, _TS),
        (TARGET, _TS),
    ]
    return pa.schema(fields)


def empty_examples(layout: SeriesLayout) -> pa.Table:
    return example_schema(layout).empty_table()


def example_table(columns: Mapping[str, Any], layout: SeriesLayout) -> pa.Table:
    """The columns :func:`examples` built, as a table of :func:`example_schema`."""
    schema = example_schema(layout)
    arrays = []
    for f in schema:
        values = columns[f.name]
        if f.type == _TS:
            arrays.append(pa.array(np.asarray(values, dtype=np.int64), pa.int64()).cast(_TS))
        elif pa.types.is_floating(f.type):
            arrays.append(pa.array(np.asarray(values, dtype=np.float64), from_pandas=True))
        else:
            arrays.append(pa.array(values, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


# --------------------------------------------------------------------------- many series


def groups(observations: pa.Table, layout: SeriesLayout) -> list[pa.Table]:
    """The observations of each series (one table for the one series)."""
    if not layout.series or not observations.num_rows:
        return [observations]
    frame = observations.select(layout.series).to_pandas()
    indices = frame.groupby([frame[s].astype(str) for s in layout.series], sort=True).indices
    return [observations.take(pa.array(rows)) for rows in indices.values()]


def all_examples(observations: pa.Table, layout: SeriesLayout, split: str) -> pa.Table:
    """The ``split`` examples of every series, on this machine."""
    parts = [series_examples(g, layout, split) for g in groups(observations, layout)]
    return pa.concat_tables([empty_examples(layout), *parts])


def example_dataset(rows: Any, layout: SeriesLayout, split: str) -> Any:
    """The ``split`` examples of a Ray Dataset of observations, each series' built in a
    Ray Data task (the one series in one task)."""
    grouped = rows.groupby(layout.series) if layout.series else rows.repartition(1)
    build = grouped.map_groups if layout.series else grouped.map_batches
    options = {} if layout.series else {"batch_size": None}
    return build(
        series_examples,
        batch_format="pyarrow",
        fn_kwargs={"layout": layout, "split": split},
        **options,
    )


# --------------------------------------------------------------------------- fitting


def fit_layout(observations: pa.Table, data: DataConfig) -> SeriesLayout:
    """The layout of a version's observations: the validation period ends at the last
    observation of any series; each series' level and MASE scale come from its values
    before that period."""
    f = data.forecast
    if f is None:
        raise DataError("data.forecast is not set: this is not a forecasting dataset")
    if not observations.num_rows:
        raise DataError("no observations to forecast from")
    micros = pc.cast(observations.column(f.timestamp), pa.int64()).to_numpy(zero_copy_only=False)
    start = int(micros.max()) - (f.validation_steps - 1) * f.step_s * _US
    layout = SeriesLayout(
        timestamp=f.timestamp,
        series=list(f.series),
        label=data.label,
        known={k: data.columns[k].type for k in f.known_in_advance},
        step_s=f.step_s,
        horizon=f.horizon,
        season=f.season_steps,
        periods=list(f.periods),
        lags=f.lags,
        origin_every=f.origin_every,
        validation_start=_iso(start),
        levels={},
        scales={},
    )
    levels, scales = {}, {}
    for rows in groups(observations, layout):
        key = layout.key([rows.column(s)[0].as_py() for s in layout.series])
        p = panel(rows, layout)
        before = p.values[: max(0, min(len(p), (start - p.start_us) // layout.step_us))]
        known = before[np.isfinite(before)]
        mean = float(np.mean(np.abs(known))) if known.size else 0.0
        levels[key] = mean if mean > 0 else 1.0
        diffs = (
            np.abs(before[layout.season :] - before[: -layout.season])
            if (len(before) > layout.season)
            else np.zeros(0)
        )
        diffs = diffs[np.isfinite(diffs)]
        scales[key] = float(diffs.mean()) if diffs.size else 0.0
    return SeriesLayout(**{**layout.to_dict(), "levels": levels, "scales": scales})
