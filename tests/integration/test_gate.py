"""The promotion gate against real stores: it fails closed when the champion cannot be
read (the S3 endpoint holding its files is down), and lets a challenger through without a
comparison only when the champion cannot be compared (its files are gone). One test: the
outage and the loss are two moments of the same champion."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from rayops import tracking
from rayops.data.ingest import file_source, ingest
from rayops.errors import GateError
from rayops.gate import register_and_gate
from rayops.train.driver import log_bundle
from tests.helpers import demo_config, untrained_bundle, write_demo_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _dataset(cfg):
    write_demo_data(file_source(cfg).location, rows=1500, files=1)
    return ingest(cfg)


def test_gate_fails_closed_in_an_outage_then_replaces_a_champion_whose_files_are_gone(
    tmp_path, ray_start_4_cpus, s3_server, monkeypatch
):
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_server.url)
    bucket = s3_server.create_bucket()
    local = demo_config(tmp_path)
    on_s3 = local.with_overrides(
        {
            "tracking.experiment": "artifacts-on-s3",
            "tracking.artifact_location": f"s3://{bucket}/artifacts",
        }
    )
    version = _dataset(local)
    # the champion's files live on the endpoint, the challenger's are local
    first = register_and_gate(on_s3, *_logged(on_s3, version, tmp_path / "v1", 0), version)
    assert first.promoted
    challenger_uri, challenger_run = _logged(local, version, tmp_path / "v2", 1)
    s3_server.stop()  # the outage: the champion can no longer be scored

    with pytest.raises(GateError) as failure:
        register_and_gate(local, challenger_uri, challenger_run, version)
    message = str(failure.value)
    assert "nothing promoted" in message and "@champion stays v1" in message
    assert "v2 stays registered, unjudged" in message
    assert "cannot download churn-classifier v1" in message
    assert tracking.resolve_alias(local.tracking, local.model_name, "champion").version == "1"
    # @challenger never names a model the gate did not pass: still v1, the first champion
    assert tracking.resolve_alias(local.tracking, local.model_name, "challenger").version == "1"
    client = MlflowClient(local.tracking.uri)
    assert "rayops.gate.promoted" not in client.get_model_version(local.model_name, "2").tags

    # The store answers again, but the champion's files were deleted meanwhile (a restarted
    # moto server is empty; the bucket is back, without them): the same call, retried,
    # judges v2 (never a second registration) and replaces v1, with the reason tagged.
    s3_server.start().create_bucket(bucket)
    decision = register_and_gate(local, challenger_uri, challenger_run, version)
    assert decision.challenger.version == "2" and decision.previous.version == "1"
    assert decision.promoted and decision.champion_score is None
    assert "champion v1 not comparable: its files are gone" in decision.reason
    assert tracking.resolve_alias(local.tracking, local.model_name, "champion").version == "2"
    tags = client.get_model_version(local.model_name, "2").tags
    assert tags["rayops.gate.reason"] == decision.reason
    assert tags["rayops.gate.promoted"] == "true"


def _logged(cfg, version, folder: Path, seed: int) -> tuple[str, str]:
    """A seeded, untrained model of ``version``'s inputs logged as the model of a new run in
    ``cfg``'s experiment, as training logs one (the gate scores it like any other).
    Returns its model URI and run id."""
    run_id = tracking.start_run(cfg.tracking, cfg.experiment_name, f"{cfg.name}-train")
    uri = log_bundle(
        cfg, version, run_id, untrained_bundle(cfg, version, run_id, folder, seed), cfg.model.family
    )
    tracking.end_run(cfg.tracking, run_id)
    return uri, run_id
