"""``rayops demo``: synthetic data -> the whole pipeline -> a real HTTP request to Ray Serve."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests

from rayops import demo, tracking
from rayops.config import PipelineConfig, load_config
from rayops.data.ingest import file_source
from rayops.demo import churn
from rayops.demo import forecasting as demand_demo
from rayops.demo import recommending as watching_demo
from rayops.errors import ConfigError, ServeError
from rayops.runtime import Output, connect

if TYPE_CHECKING:
    from rayops.pipeline import PipelineResult

logger = logging.getLogger(__name__)

# Two customers a human would judge very differently: the model should agree.
SAMPLE_RECORDS = [
    {
        "age": 29,
        "tenure_months": 2,
        "monthly_charges": 99.5,
        "total_charges": 199.0,
        "contract": "month-to-month",
        "internet_service": "fiber",
        "payment_method": "electronic_check",
        "support_calls": 4,
        "paperless_billing": True,
        "region": "north",
    },
    {
        "age": 58,
        "tenure_months": 64,
        "monthly_charges": 45.2,
        "total_charges": 2893.0,
        "contract": "two-year",
        "internet_service": "dsl",
        "payment_method": "credit_card",
        "support_calls": 0,
        "paperless_billing": False,
        "region": None,
    },
]


@dataclass(frozen=True)
class Scenario:
    """What one workload's demo does around the pipeline they share: its data, its request
    to the served model, and how the answer is shown."""

    route: str  # the served endpoint the demo calls
    write: Callable[[PipelineConfig, int, int], object]  # synthetic raw data: (cfg, rows, seed)
    request: Callable[[PipelineResult, int], dict[str, Any]]  # the body sent
    show: Callable[[PipelineConfig, PipelineResult, dict[str, Any], dict[str, Any]], None]
    curl: Callable[[str, dict[str, Any]], str]  # the same request, for a shell
    operates: bool = False  # --operate runs a cycle of the loop on it


def _scenarios() -> dict[str, Scenario]:
    return {
        "classification": Scenario(
            "predict",
            lambda cfg, rows, seed: churn.write(
                churn.generate(rows, seed), file_source(cfg).location
            ),
            lambda result, seed: {"records": SAMPLE_RECORDS},
            _show,
            lambda url, body: _curl(url),
            operates=True,
        ),
        "forecasting": Scenario(
            "forecast",
            lambda cfg, rows, seed: demand_demo.write_data(file_source(cfg).location, seed),
            demand_demo.request,
            demand_demo.show,
            demand_demo.curl,
        ),
        "recommendation": Scenario(
            "recommend",
            lambda cfg, rows, seed: watching_demo.write_data(cfg, seed),
            watching_demo.request,
            watching_demo.show,
            watching_demo.curl,
        ),
    }


def run_demo(
    rows: int,
    seed: int,
    port: int,
    keep_running: bool,
    overrides: list[str],
    output: Output | None = None,
    operate: bool = False,
    workload: str = "classification",
) -> None:
    """Run a packaged demo from the current directory (./lake, ./mlflow): the churn
    classifier, or with ``workload="forecasting"`` the hourly demand forecaster, with
    ``workload="recommendation"`` the viewing recommender; with
    ``operate`` (churn), then one cycle of the operate loop on a later, shifted month."""
    from rayops.demo.operate import OPERATE_OVERRIDES, run_operate
    from rayops.pipeline import run_pipeline
    from rayops.serve import wait_ready

    scenario = _scenarios()[workload]
    if operate and not scenario.operates:
        raise ConfigError(f"--operate runs on the churn demo, not {workload}: leave out --workload")
    cfg = load_config(
        demo.config_path(demo.WORKLOADS[workload]),
        [f"serve.port={port}", *(OPERATE_OVERRIDES if operate else []), *overrides],
    )
    raw = file_source(cfg).location
    if not raw.list_files():
        logger.info("Writing synthetic %s data to %s", workload, raw.uri)
        scenario.write(cfg, rows, seed)
    connect(cfg, output)
    result = run_pipeline(cfg)
    assert result.url is not None
    wait_ready(result.url)
    body = scenario.request(result, seed)
    response = requests.post(f"{result.url}/{scenario.route}", json=body, timeout=30)
    if response.status_code != 200:
        raise ServeError(
            f"the served model answered HTTP {response.status_code}: {response.text[:300]}"
        )
    scenario.show(cfg, result, body, response.json())
    if operate:
        run_operate(cfg, result.url, rows)  # a month as large as the first
    _serving(
        result.url,
        scenario.curl(result.url, body),
        keep_running,
        "" if workload == "classification" else f" --workload {workload}",
    )


def _serving(url: str, curl: str, keep_running: bool, flag: str) -> None:
    """Keep serving until Ctrl-C, or say how to."""
    if keep_running:
        print(f"Serving at {url}; try:\n  {curl}\nPress Ctrl-C to stop.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    else:
        print(f"To keep it serving: .venv/bin/rayops demo{flag} --keep-running, then\n  " + curl)
    # No serve.shutdown(): leaving the process stops the local cluster, Serve included
    # (shutting Serve down first only adds a raylet warning about its controller).


def _show(
    cfg: PipelineConfig, result: PipelineResult, sent: dict[str, Any], body: dict[str, Any]
) -> None:
    """The story in a dozen lines: data, model, gate, the served answer."""
    rows = result.dataset.manifest.rows
    champion = result.model.decision.champion
    print("\n=== rayops demo ===")
    print(
        f"data:     {result.dataset.id}: {rows.train:,} train + {rows.valid:,} valid "
        f"rows, {rows.quarantine:,} quarantined (see `rayops quarantine`)"
    )
    print(
        "model:    "
        + ", ".join(
            f"{k}={v:.3f}" for k, v in result.model.metrics.items() if k.startswith("valid_")
        )
    )
    print(f"gate:     {result.model.decision.summary()}")
    print(f"serving:  {champion.name} v{champion.version} @champion at {result.url}/predict")
    print(
        f"request:  POST /predict with {len(SAMPLE_RECORDS)} customers -> HTTP 200, "
        f"answered by v{body['model']['version']}"
    )
    for record, answer in zip(SAMPLE_RECORDS, body["predictions"], strict=True):
        print(
            f"  {record['contract']:>14}, {record['tenure_months']:>2} months: churn "
            f"{answer['prediction']:<3} (p(yes)={answer['probabilities']['yes']:.2f})"
        )
    print(tracking.where_to_look(cfg.tracking))


def _curl(url: str) -> str:
    return (
        f"curl -s -X POST {url}/predict -H 'content-type: application/json' "
        '-d \'{"records": [' + json.dumps(SAMPLE_RECORDS[0]) + "]}'"
    )
