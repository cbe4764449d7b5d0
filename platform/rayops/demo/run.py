"""``rayops demo``: synthetic data -> the whole pipeline -> a real HTTP request to Ray Serve."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

import requests

from rayops import demo
from rayops.config import PipelineConfig, load_config
from rayops.data.ingest import file_source
from rayops.demo import churn
from rayops.demo import forecasting as demand_demo
from rayops.errors import ConfigError, ServeError
from rayops.runtime import Output, connect

if TYPE_CHECKING:
    from rayops.pipeline import PipelineResult

logger = logging.getLogger(__name__)

# Two customers a human would judge very differently: the model should agree.
SAMPLE_RECORDS = [
    {"age": 29, "tenure_months": 2, "monthly_charges": 99.5, "total_charges": 199.0,
     "contract": "month-to-month", "internet_service": "fiber",
     "payment_method": "electronic_check", "support_calls": 4, "paperless_billing": True,
     "region": "north"},
    {"age": 58, "tenure_months": 64, "monthly_charges": 45.2, "total_charges": 2893.0,
     "contract": "two-year", "internet_service": "dsl", "payment_method": "credit_card",
     "support_calls": 0, "paperless_billing": False, "region": None},
]


def run_demo(rows: int, seed: int, port: int, keep_running: bool, overrides: list[str],
             output: Output | None = None, operate: bool = False,
             workload: str = "classification") -> None:
    """Run a packaged demo from the current directory (./lake, ./mlflow): the churn
    classifier, or with ``workload="forecasting"`` the hourly demand forecaster; with
    ``operate`` (churn), then one cycle of the operate loop on a later, shifted month."""
    from rayops.demo.operate import OPERATE_OVERRIDES, run_operate
    from rayops.pipeline import run_pipeline
    from rayops.serve import wait_ready

    forecasting = workload == "forecasting"
    if operate and forecasting:
        raise ConfigError("--operate runs on the churn demo; leave out --workload")
    extra = OPERATE_OVERRIDES if operate else []
    cfg = load_config(demo.config_path(demo.WORKLOADS[workload]),
                      [f"serve.port={port}", *extra, *overrides])
    raw = file_source(cfg).location
    if not raw.list_files():
        logger.info("Writing synthetic %s data to %s", workload, raw.uri)
        if forecasting:
            demand_demo.write_data(raw, seed)
        else:
            churn.write(churn.generate(rows, seed), raw)
    connect(cfg, output)
    result = run_pipeline(cfg)
    assert result.url is not None
    wait_ready(result.url)
    route, body = (("forecast", demand_demo.request(result, seed)) if forecasting
                   else ("predict", {"records": SAMPLE_RECORDS}))
    response = requests.post(f"{result.url}/{route}", json=body, timeout=30)
    if response.status_code != 200:
        raise ServeError(f"the served model answered HTTP {response.status_code}: "
                         f"{response.text[:300]}")
    if forecasting:
        demand_demo.show(cfg, result, body, response.json())
    else:
        _show(cfg, result, response.json())
    if operate:
        run_operate(cfg, result.url, rows)  # a month as large as the first
    curl = demand_demo.curl(result.url, body) if forecasting else _curl(result.url)
    if keep_running:
        print(f"Serving at {result.url}; try:\n  {curl}\nPress Ctrl-C to stop.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    else:
        flag = " --workload forecasting" if forecasting else ""
        print(f"To keep it serving: .venv/bin/rayops demo{flag} --keep-running, then\n  "
              + curl)
    # No serve.shutdown(): leaving the process stops the local cluster, Serve included
    # (shutting Serve down first only adds a raylet warning about its controller).


def _show(cfg: PipelineConfig, result: PipelineResult, body: dict[str, Any]) -> None:
    """The story in a dozen lines: data, model, gate, the served answer."""
    rows = result.dataset.manifest.rows
    champion = result.model.decision.champion
    print("\n=== rayops demo ===")
    print(f"data:     {result.dataset.id}: {rows.train:,} train + {rows.valid:,} valid "
          f"rows, {rows.quarantine:,} quarantined (see `rayops quarantine`)")
    print("model:    " + ", ".join(f"{k}={v:.3f}" for k, v in result.model.metrics.items()
                                   if k.startswith("valid_")))
    print(f"gate:     {result.model.decision.summary()}")
    print(f"serving:  {champion.name} v{champion.version} @champion at {result.url}/predict")
    print(f"request:  POST /predict with {len(SAMPLE_RECORDS)} customers -> HTTP 200, "
          f"answered by v{body['model']['version']}")
    for record, answer in zip(SAMPLE_RECORDS, body["predictions"], strict=True):
        print(f"  {record['contract']:>14}, {record['tenure_months']:>2} months: churn "
              f"{answer['prediction']:<3} (p(yes)={answer['probabilities']['yes']:.2f})")
    print(f"MLflow:   mlflow ui --backend-store-uri {cfg.tracking.uri}")


def _curl(url: str) -> str:
    return (f"curl -s -X POST {url}/predict -H 'content-type: application/json' "
            "-d '{\"records\": [" + json.dumps(SAMPLE_RECORDS[0]) + "]}'")
