"""Tracking against a real `mlflow server` (PostgreSQL backend, artifacts proxied to S3)."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from rayops import tracking
from rayops.data.ingest import file_source, ingest
from rayops.demo.run import SAMPLE_RECORDS
from rayops.pipeline import train_and_register
from tests.helpers import demo_config, write_demo_data
from tests.integration.conftest import list_keys

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.postgres]


def test_run_model_and_alias_live_in_the_server(tmp_path, ray_start_4_cpus, mlflow_server,
                                                s3_endpoint):
    import pandas as pd

    cfg = demo_config(tmp_path, **{"tracking.uri": mlflow_server["uri"], "train.epochs": 2,
                                   "tracking.experiment": "server-test"})
    write_demo_data(file_source(cfg).location, rows=2000, files=2)
    result = train_and_register(cfg, ingest(cfg), sweep=False)

    client = MlflowClient(mlflow_server["uri"])
    assert client.get_run(result.run_id).info.status == "FINISHED"
    assert len(client.get_metric_history(result.run_id, "valid_loss")) == 2
    champion = client.get_model_version_by_alias(cfg.model_name, "champion")
    assert champion.version == result.decision.challenger.version  # the first champion
    assert result.decision.promoted and result.decision.previous is None
    assert any("bundle.json" in key for key in
               list_keys(s3_endpoint, mlflow_server["bucket"], "artifacts/"))

    mlflow.set_tracking_uri(mlflow_server["uri"])
    model = mlflow.pyfunc.load_model(f"models:/{cfg.model_name}@champion")
    predictions = model.predict(pd.DataFrame(SAMPLE_RECORDS))
    assert list(predictions["prediction"])[1] == "no"
    assert predictions["probability_yes"][0] > predictions["probability_yes"][1]
    bundle = tracking.download_bundle(cfg.tracking, tracking.resolve_alias(
        cfg.tracking, cfg.model_name, "champion"), tmp_path / "dl")
    assert (bundle / "weights.pt").exists()
