"""Training never waits on MLflow, and ``--resume`` completes a run that stopped after
training: every epoch's metrics, the model and its registration, without retraining; against
a real `mlflow server` (PostgreSQL backend, artifacts proxied to S3)."""

from __future__ import annotations

import threading

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from rayops import tracking
from rayops.data.ingest import file_source, ingest
from rayops.demo.run import SAMPLE_RECORDS
from rayops.errors import TrackingError
from rayops.models import load_state_dict
from rayops.pipeline import train_and_register
from rayops.storage import root_of
from tests.helpers import demo_config, wait_for, write_demo_data
from tests.integration.conftest import list_keys

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.postgres]

# Enough epochs that the outage (stopping the server takes a moment) lands while the run
# still trains: a run of one worker starts at once, and 4 epochs ended before the server was
# down, so the driver's logging met the outage mid-call, inside MLflow's minutes of retries.
EPOCHS = 30


def _checkpoint_epochs(cfg) -> dict[str, int]:
    """Every checkpoint file in storage and the epoch it holds."""
    files = [
        i.path
        for i in root_of(cfg.storage).join("checkpoints").list_files()
        if i.path.endswith("checkpoint.pt")
    ]
    return {path: int(load_state_dict(path)["epoch"]) for path in files}


def test_mlflow_outage_stalls_no_worker_and_resume_logs_every_epoch(
    tmp_path, ray_start_4_cpus, mlflow_server, s3_endpoint
):
    server = mlflow_server
    cfg = demo_config(
        tmp_path,
        **{
            "tracking.uri": server.uri,
            "train.epochs": EPOCHS,
            "train.early_stopping_patience": "null",
            "train.num_workers": 1,
            "tracking.experiment": "outage",
        },
    )
    write_demo_data(file_source(cfg).location, rows=2000, files=2)
    version = ingest(cfg)
    runs = root_of(cfg.storage).join("checkpoints")

    def outage() -> None:  # MLflow goes down as soon as the trainer starts
        wait_for(
            lambda: bool(runs.list_dir()),
            timeout_s=300,
            every_s=0.1,
            what="the trainer's storage folder",
        )
        server.stop()

    stopper = threading.Thread(target=outage, daemon=True)
    stopper.start()
    with pytest.raises(TrackingError) as failure:
        train_and_register(cfg, version)
    stopper.join()
    message = str(failure.value)
    assert "\n" not in message  # the CLI prints it as one line
    assert f"trained {EPOCHS} epoch(s)" in message and server.uri in message
    assert "not logged" in message and "`--resume` logs them without retraining" in message
    # Every epoch was trained and checkpointed while MLflow was down.
    before = _checkpoint_epochs(cfg)
    assert max(before.values()) == EPOCHS
    (bundle_folder,) = root_of(cfg.storage).join("models").list_dir()
    assert root_of(cfg.storage).join("models", bundle_folder, "weights.pt").exists()

    server.start()
    result = train_and_register(cfg, resume=True)
    assert _checkpoint_epochs(cfg) == before  # nothing was trained again
    client = MlflowClient(server.uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(result.run_id, "epoch")]
    assert sorted(steps) == list(range(1, EPOCHS + 1))  # every epoch, each once
    assert len(client.get_metric_history(result.run_id, "valid_f1")) == EPOCHS
    resumed = client.get_metric_history(result.run_id, "resumed_from_epoch")
    assert {m.value for m in resumed} == {0}  # one uninterrupted pass of training
    champion = tracking.resolve_alias(cfg.tracking, cfg.model_name, "champion")
    assert champion.run_id == result.run_id and result.decision.promoted
    assert tracking.logged_model_uri(cfg.tracking, result.run_id) is not None

    # The run, the model and the alias live in the server (PostgreSQL backend, artifacts
    # proxied to S3): MLflow's own pyfunc loads the champion from there and predicts.
    assert any("bundle.json" in key for key in list_keys(s3_endpoint, server.bucket, "artifacts/"))
    mlflow.set_tracking_uri(server.uri)
    model = mlflow.pyfunc.load_model(f"models:/{cfg.model_name}@champion")
    predictions = model.predict(pd.DataFrame(SAMPLE_RECORDS))
    assert list(predictions["prediction"])[1] == "no"
    assert predictions["probability_yes"][0] > predictions["probability_yes"][1]
    bundle = tracking.download_bundle(cfg.tracking, champion, tmp_path / "dl")
    assert (bundle / "weights.pt").exists()
