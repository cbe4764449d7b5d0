"""``rayops demo --workload forecasting``: generated hourly demand per zone -> ingest ->
sweep -> gate -> Ray Serve, then a served 24-hour forecast of one zone beside its
seasonal-naive forecast (the same hour a week before)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pandas as pd

from rayops import tracking
from rayops.demo import demand

if TYPE_CHECKING:
    from rayops.config import PipelineConfig
    from rayops.pipeline import PipelineResult
    from rayops.storage import Location

ZONES, WEEKS = 24, 10
ZONE = "Z03"


def write_data(target: Location, seed: int) -> None:
    """The raw weekly files (all but the day after them: that day's weather and holidays
    are what a request sends as known in advance)."""
    demand.write(demand.generate(zone_count=ZONES, weeks=WEEKS, seed=seed), target)


def request(result: PipelineResult, seed: int) -> dict[str, Any]:
    """The next day after the data, for one zone: no history (the replica reads the
    curated data), the forecast temperatures and holidays of the day."""
    observed = result.dataset.rows_where({"zone": ZONE}).to_pandas()
    last = observed["ts"].max()
    hours = pd.date_range(last + pd.Timedelta(hours=1), periods=24, freq="h")
    start = pd.Timestamp(demand.START)
    days = pd.date_range(start, hours[-1], freq="h")
    temp = dict(zip(days, demand.weather(days, seed), strict=True))
    holiday = dict(zip(days, demand.holidays(days), strict=True))
    return {
        "series": {"zone": ZONE},
        "future": [
            {
                "ts": h.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "temp": float(temp[h]),
                "holiday": bool(holiday[h]),
            }
            for h in hours
        ],
    }


def show(
    cfg: PipelineConfig, result: PipelineResult, body: dict[str, Any], answer: dict[str, Any]
) -> None:
    """The story: data, model against seasonal naive, gate, the served forecast."""
    rows, metrics = result.dataset.manifest.rows, result.model.metrics
    champion = result.model.decision.champion
    observed = result.dataset.rows_where({"zone": ZONE}).to_pandas().set_index("ts")
    print("\n=== rayops demo: forecasting ===")
    print(
        f"data:     {result.dataset.id}: {rows.train:,} hourly observations of {ZONES} "
        f"zones, {rows.quarantine:,} quarantined (see `rayops quarantine`)"
    )
    print(
        f"model:    valid_mae={metrics['valid_mae']:.2f} vs seasonal naive "
        f"{metrics['valid_naive_mae']:.2f}, MASE {metrics['valid_mase']:.3f}, sMAPE "
        f"{metrics['valid_smape']:.1f}%, P10-P90 coverage "
        f"{metrics['valid_coverage_80']:.2f}"
    )
    print(f"gate:     {result.model.decision.summary()}")
    print(f"serving:  {champion.name} v{champion.version} @champion at {result.url}/forecast")
    print(
        f"request:  POST /forecast, zone {ZONE}, the next 24 hours -> HTTP 200, answered "
        f"by v{answer['model']['version']}"
    )
    print("  hour (UTC)         forecast   P10 - P90    seasonal naive (a week before)")
    for step in answer["forecast"]:
        ts = pd.Timestamp(step["ts"])
        naive = observed["demand"].get(ts - pd.Timedelta(weeks=1))
        q = step["quantiles"]
        print(
            f"  {ts:%Y-%m-%d %H:%M}  {step['value']:8.1f}   {q['0.1']:5.1f} - "
            f"{q['0.9']:5.1f}   {'-' if naive is None else f'{naive:.0f}':>5}"
        )
    print(tracking.where_to_look(cfg.tracking))


def curl(url: str, body: dict[str, Any]) -> str:
    short = {**body, "future": body["future"][:2]}
    return (
        f"curl -s -X POST {url}/forecast -H 'content-type: application/json' "
        f"-d '{json.dumps(short)}'"
    )
