"""`ray job submit --working-dir` of the thin job entrypoints to a `ray start --head` cluster:
failures and stops (the README's ingest and train jobs run in test_readme_jobs.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from rayops.data.ingest import file_source, ingest
from tests.helpers import assert_resumed_once, demo_config, wait_for, write_demo_data
from tests.integration.conftest import job_dir, submit_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_bad_config_fails_the_job_with_the_key_named(tmp_path, ray_head_cluster):
    workdir = job_dir(tmp_path, demo_config(tmp_path))
    (workdir / "bad.yaml").write_text("name: x\ndata: {label: y, task: guess, columns: {}}\n")
    result = submit_job(ray_head_cluster, workdir, "jobs/ingest.py", "bad.yaml")
    assert result.returncode != 0
    job_id = re.search(r"Job '(raysubmit_\w+)' failed", result.stdout + result.stderr)[1]
    # The job's reason, not a traceback: the config error's list of invalid settings.
    last = _last_log_line(ray_head_cluster, job_id)
    assert last == "  data.task: Input should be 'classification' or 'regression' (got 'guess')"


def _start(address: str, workdir: Path, submission_id: str, *job: str) -> None:
    """Submit without waiting (retried while the job agent starts)."""
    ray = str(Path(sys.executable).parent / "ray")
    deadline = time.monotonic() + 120
    while True:
        result = subprocess.run(
            [ray, "job", "submit", "--address", address, "--working-dir", str(workdir),
             "--submission-id", submission_id, "--no-wait", "--", sys.executable, *job],
            capture_output=True, text=True, timeout=120)
        if result.returncode == 0:
            return
        if "No available agent" not in result.stderr or time.monotonic() > deadline:
            raise AssertionError(result.stderr[-2000:])
        time.sleep(2)


def _last_log_line(address: str, submission_id: str) -> str:
    ray = str(Path(sys.executable).parent / "ray")
    logs = subprocess.run([ray, "job", "logs", "--address", address, submission_id],
                          capture_output=True, text=True, timeout=120, check=True).stdout
    return [line for line in logs.splitlines() if line.strip()][-1]


def _stop(address: str, submission_id: str) -> None:
    ray = str(Path(sys.executable).parent / "ray")
    subprocess.run([ray, "job", "stop", "--address", address, submission_id],
                   capture_output=True, text=True, timeout=120, check=True)


def test_sweep_driver_killed_mid_trial_then_resumed(tmp_path, ray_start_4_cpus,
                                                   ray_head_cluster):
    """Two trials, one at a time: the job is stopped once the first has finished and the
    second has a checkpoint. The stopped job says how to resume; the resumed sweep keeps the
    first trial (not trained again) and continues the second from its checkpoint, each
    epoch trained and logged once (the path `rayops train --resume` takes too: both go
    through the same driver), without unpickling what Tune stored."""
    from rayops import tracking
    from rayops.storage import root_of

    epochs = 24  # enough that the stop lands mid-trial: an epoch here takes 0.3-0.5 s
    cfg = demo_config(tmp_path, **{"train.epochs": epochs, "train.num_workers": 1,
                                   "train.early_stopping_patience": "null",
                                   "tune.enabled": True, "tune.num_samples": 2,
                                   "tune.max_concurrent_trials": 1,
                                   "tune.scheduler.type": "fifo"})
    write_demo_data(file_source(cfg).location, rows=1500, files=1)
    ingest(cfg)  # here: the ingest job has its own test; this one is about the sweep job
    workdir = job_dir(tmp_path, cfg)
    client = MlflowClient(cfg.tracking.uri)
    checkpoints = root_of(cfg.storage).join("checkpoints")

    def finished_trials() -> list:
        experiment = client.get_experiment_by_name(cfg.experiment_name)
        if experiment is None:
            return []
        runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'")
        return [r for r in runs if tracking.TRIAL_TAG in r.data.tags]

    def second_trial_checkpointed() -> bool:
        done = {r.data.tags[tracking.TRIAL_TAG] for r in finished_trials()}
        started = {info.path.split("/checkpoints/", 1)[1].split("/", 1)[0]
                   for info in checkpoints.list_files() if info.path.endswith(".pt")}
        return len(done) == 1 and any(not name.endswith(tuple(done)) for name in started)

    _start(ray_head_cluster, workdir, "tune-1", "jobs/tune.py", "pipeline.yaml")
    wait_for(second_trial_checkpointed, timeout_s=300, every_s=0.2,
             what="a finished trial and a checkpoint of the second")
    _stop(ray_head_cluster, "tune-1")  # the driver dies mid-trial
    wait_for(lambda: "resumable" in _last_log_line(ray_head_cluster, "tune-1"), timeout_s=30,
             what="the stopped job's last line")
    assert _last_log_line(ray_head_cluster, "tune-1").endswith(
        "python jobs/tune.py pipeline.yaml --resume")
    done_before = {r.data.tags[tracking.TRIAL_TAG]: r.info.run_id for r in finished_trials()}
    # Any code that can write the bucket plants payloads in Tune's pickled experiment
    # state (tuner.pkl, the searcher's): resuming must not unpickle them.
    marker = tmp_path / "pwned"
    planted = _plant_payloads(root_of(cfg.storage).join("tune"), marker)
    assert any(p.endswith("tuner.pkl") for p in planted), planted

    resumed = submit_job(ray_head_cluster, workdir, "jobs/tune.py", "pipeline.yaml",
                         "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    sweeps = client.search_runs([client.get_experiment_by_name(cfg.experiment_name)
                                 .experiment_id], "tags.`rayops.kind` = 'sweep'")
    assert len(sweeps) == 1 and sweeps[0].info.status == "FINISHED"
    trials = tracking.trial_runs(cfg.tracking, cfg.experiment_name, sweeps[0].info.run_id)
    assert len(trials) == 2
    for trial_id, run_id in done_before.items():
        assert trials[trial_id] == run_id
        history = client.get_metric_history(run_id, "epoch")
        assert sorted(m.value for m in history) == list(range(1, epochs + 1))  # not again
    (continued,) = [run_id for trial_id, run_id in trials.items() if trial_id not in done_before]
    assert client.get_run(continued).info.status == "FINISHED"  # one run, continued
    assert_resumed_once(client, continued, epochs=epochs)
    assert not marker.exists(), "resuming the sweep unpickled a planted payload"


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant_payloads(folder, marker: Path) -> list[str]:
    """Every pickle under ``folder`` replaced by one that runs code when loaded."""
    import pickle

    payload = pickle.dumps(_Payload(marker))
    planted = [info.path for info in folder.list_files() if info.path.endswith(".pkl")]
    for path in planted:
        Path(path).write_bytes(payload)
    return planted
