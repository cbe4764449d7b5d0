"""The same code path against a real S3 API (moto server on 127.0.0.1): raw data, curated
versions and training checkpoints all live in the bucket."""

from __future__ import annotations

import pytest

from rayops.data.ingest import file_source, ingest
from rayops.pipeline import train_and_register
from tests.helpers import demo_config, write_demo_data
from tests.integration.conftest import list_keys

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_ingest_and_train_through_s3(tmp_path, ray_start_4_cpus, s3_endpoint, s3_bucket):
    cfg = demo_config(tmp_path, **{"storage.root": f"s3://{s3_bucket}/lake",
                                   "storage.endpoint_url": s3_endpoint, "train.epochs": 2})
    write_demo_data(file_source(cfg).location, rows=2000, files=2)
    assert sorted(list_keys(s3_endpoint, s3_bucket, "lake/raw/")) == [
        "lake/raw/churn/part-0000.csv", "lake/raw/churn/part-0001.csv"]

    version = ingest(cfg)
    assert version.uri == f"s3://{s3_bucket}/lake/curated/churn/rows@v1"
    keys = list_keys(s3_endpoint, s3_bucket, "lake/curated/churn/")
    assert "lake/curated/churn/rows/_delta_log/00000000000000000001.json" in keys
    assert any(k.startswith("lake/curated/churn/rows/rayops_split=train/")
               and k.endswith(".parquet") for k in keys)
    assert any(k.startswith("lake/curated/churn/quarantine/") and k.endswith(".parquet")
               for k in keys)
    assert sum(k.startswith("lake/curated/churn/state/") for k in keys) == 1
    assert version.manifest["rows"]["read"] == 2000

    result = train_and_register(cfg, version, sweep=False)
    assert result.metrics["epoch"] >= 1 and 0.0 < result.metrics["valid_f1"] <= 1.0
    checkpoints = list_keys(s3_endpoint, s3_bucket, "lake/checkpoints/")
    assert any(k.endswith("checkpoint.pt") for k in checkpoints), checkpoints
