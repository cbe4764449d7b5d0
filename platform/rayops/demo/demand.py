"""Hourly ride demand per city zone: the forecasting demo's raw data.

Each zone has its own size, a daily cycle (morning and evening peaks on working days, a late
one on weekends), a weekly cycle, a response to the temperature and to public holidays, and
Poisson noise; a few outages (hours with no data at all, and hours of zero demand) and a few
malformed rows (a timestamp off the hour, a text in the demand column, a repeated hour), as
real exports have. Deterministic by seed; written as one CSV file per week, so later weeks
arrive as new files.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rayops.demo.files import write_weekly
from rayops.storage import Location

START = "2024-01-01T00:00:00Z"  # a Monday


def zones(count: int) -> list[str]:
    return [f"Z{i:02d}" for i in range(count)]


def holidays(hours: pd.DatetimeIndex) -> np.ndarray:
    """One day in every 17 from the 9th is a public holiday (known in advance)."""
    day = np.asarray((hours - hours[0]).days)
    return (day % 17 == 9).astype(int)


def weather(hours: pd.DatetimeIndex, seed: int) -> np.ndarray:
    """Temperature: a daily swing around a slow wave, with day-to-day noise (a forecast,
    known ahead)."""
    rng = np.random.default_rng(seed)
    days = len(hours) // 24 + 2
    daily = 12 + 6 * np.sin(np.arange(days) / 9) + rng.normal(0, 1.5, days)
    base = np.repeat(daily, 24)[: len(hours)]
    return np.round(base + 5 * np.sin(2 * np.pi * (np.asarray(hours.hour) - 9) / 24), 1)


def _profile(hours: pd.DatetimeIndex, holiday: np.ndarray) -> np.ndarray:
    """Expected demand of a zone of size 1 at each hour."""
    hour, weekday = np.asarray(hours.hour), np.asarray(hours.day_of_week)
    weekend = (weekday >= 5) | (holiday == 1)
    working = (
        1.0
        + 1.6 * np.exp(-((hour - 8) ** 2) / 3)
        + 1.3 * np.exp(-((hour - 18) ** 2) / 4)
        + 0.4 * np.exp(-((hour - 13) ** 2) / 6)
    )
    resting = 0.8 + 1.2 * np.exp(-((hour - 14) ** 2) / 10) + 0.9 * np.exp(-((hour - 22) ** 2) / 4)
    night = 0.25 + 0.75 * (1 - np.exp(-((hour - 3) ** 2) / 6))
    return np.where(weekend, resting, working) * night * np.where(weekday == 4, 1.15, 1.0)


def generate(zone_count: int = 36, weeks: int = 12, seed: int = 5) -> pd.DataFrame:
    """``weeks`` of hourly observations for ``zone_count`` zones, corrupted like exports."""
    rng = np.random.default_rng(seed)
    hours = pd.date_range(START, periods=weeks * 7 * 24, freq="h")
    holiday = holidays(hours)
    temp = weather(hours, seed)
    profile = _profile(hours, holiday)
    frames = []
    for zone in zones(zone_count):
        size = float(rng.lognormal(3.2, 0.6))
        heat = rng.uniform(0.01, 0.04)  # demand rises as it gets warmer (or colder)
        expected = size * profile * (1 + heat * np.abs(temp - 15)) * np.where(holiday, 0.8, 1)
        demand = rng.poisson(np.maximum(expected, 0.1)).astype(object)
        frames.append(
            pd.DataFrame(
                {
                    "ts": hours.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "zone": zone,
                    "temp": temp,
                    "holiday": holiday,
                    "demand": demand,
                }
            )
        )
    return _corrupt(pd.concat(frames, ignore_index=True), rng)


def _corrupt(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    n = len(df)
    # outages: a few zones report nothing for some hours, others report zero demand
    gone = rng.choice(n, size=max(1, n // 400), replace=False)
    df.loc[rng.choice(n, size=max(1, n // 800), replace=False), "demand"] = 0
    bad = rng.choice(np.setdiff1d(np.arange(n), gone), size=max(3, n // 2000), replace=False)
    third = len(bad) // 3
    df.loc[bad[:third], "ts"] = df.loc[bad[:third], "ts"].str.replace(":00:00Z", ":30:00Z")
    df.loc[bad[third : 2 * third], "demand"] = "n/a?"
    repeated = df.loc[bad[2 * third :]]
    return pd.concat([df.drop(index=gone), repeated], ignore_index=True)


def write(
    frame: pd.DataFrame, target: Location, first_week: int = 0, weeks: int | None = None
) -> list[str]:
    """One CSV file per week (``week-0000.csv``...) from ``first_week``; returns the URIs."""
    return write_weekly(frame, target, pd.Timestamp(START), first_week, weeks)
