"""How the demos write their raw data: one CSV file per week, so later weeks arrive as new
files."""

from __future__ import annotations

import io

import pandas as pd

from rayops.storage import Location


def write_weekly(
    frame: pd.DataFrame,
    target: Location,
    start: pd.Timestamp,
    first_week: int = 0,
    weeks: int | None = None,
) -> list[str]:
    """One CSV file per week of ``frame["ts"]`` after ``start`` (``week-0000.csv``...),
    from ``first_week``; a row whose timestamp cannot be read goes with the first week.
    Returns the URIs written."""
    stamps = pd.to_datetime(frame["ts"], utc=True, format="ISO8601", errors="coerce")
    week = ((stamps - start).dt.days // 7).fillna(0).astype(int)
    last = int(week.max()) + 1 if weeks is None else first_week + weeks
    written = []
    for number in range(first_week, last):
        chunk = frame[week == number]
        if chunk.empty:
            continue
        buf = io.StringIO()
        chunk.to_csv(buf, index=False)
        name = f"week-{number:04d}.csv"
        target.join(name).write_bytes(buf.getvalue().encode())
        written.append(target.join(name).uri)
    return written
