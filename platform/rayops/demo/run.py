"""``rayops demo``: synthetic data -> the whole pipeline -> a real HTTP request to Ray Serve."""

from __future__ import annotations

import json
import logging
import time

import requests

from rayops import demo
from rayops.config import load_config
from rayops.data.ingest import file_source
from rayops.demo import churn
from rayops.runtime import init_ray

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


def run_demo(rows: int, seed: int, port: int, keep_running: bool, overrides: list[str]) -> None:
    """Run the packaged churn demo from the current directory (./lake, ./mlflow)."""
    from ray import serve

    from rayops.pipeline import run_pipeline
    from rayops.serve import wait_ready

    cfg = load_config(demo.config_path(), [f"serve.port={port}", *overrides])
    raw = file_source(cfg).location
    if not raw.list_files():
        logger.info("Writing %d rows of synthetic churn data to %s", rows, raw.uri)
        churn.write(churn.generate(rows, seed), raw)
    init_ray()
    result = run_pipeline(cfg)
    assert result.url is not None
    wait_ready(result.url)
    response = requests.post(f"{result.url}/predict", json={"records": SAMPLE_RECORDS},
                             timeout=30)
    champion = result.model.decision.champion
    print("\n=== rayops demo ===")
    print(f"dataset:    {result.dataset.id}  rows {result.dataset.manifest['rows']}")
    print(f"model:      {result.model.decision.summary()}")
    print(f"serving:    {champion.name} version {champion.version}  alias @{champion.alias}  "
          f"(run {champion.run_id})")
    print("metrics:    " + ", ".join(f"{k}={v:.3f}" for k, v in result.model.metrics.items()
                                      if k.startswith("valid_")))
    print(f"request:    POST {result.url}/predict  ({len(SAMPLE_RECORDS)} records)")
    print(f"response:   HTTP {response.status_code}")
    print(json.dumps(response.json(), indent=2))
    print(f"MLflow UI:  mlflow ui --backend-store-uri {cfg.tracking.uri}")
    if response.status_code != 200:
        raise RuntimeError(f"the served model answered HTTP {response.status_code}")
    if keep_running:
        print(f"\nServing at {result.url}. Try:\n  curl -s -X POST {result.url}/predict "
              "-H 'content-type: application/json' -d '{\"records\": [" +
              json.dumps(SAMPLE_RECORDS[0]) + "]}'\nPress Ctrl-C to stop.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    else:
        print("\nTo keep the service running and query it with curl: "
              "`.venv/bin/rayops demo --keep-running`, then\n"
              f"  curl -s -X POST {result.url}/predict -H 'content-type: application/json' "
              "-d @- <<< '{\"records\": [" + json.dumps(SAMPLE_RECORDS[0]) + "]}'")
    serve.shutdown()
