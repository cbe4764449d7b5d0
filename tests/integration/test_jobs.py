"""`ray job submit --working-dir` of the thin job entrypoints to a `ray start --head` cluster:
the README's job session, run as written, then failures and stops on the cluster it started.

The README's session is the code block marked `jobs-session`, taken from README.md at test
time (a changed README runs its new text), in a folder laid out like a clone after `make
demo` (its jobs/ and configs, .venv, a lake with raw data and the dataset version the demo's
ingest made). What the test changes in the text, and why: the ports (6380, 8265) become free
ones; the `ray start` line also gets its own temp dir and agent ports, so it runs beside the
test session's cluster; `ray stop`, which would stop every cluster on the machine, is left
out (the module stops its own cluster once its tests are done). Every other line runs
verbatim, in bash, from that folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient

from rayops.config import load_config
from rayops.data.ingest import file_source, ingest
from tests.helpers import assert_resumed_once, demo_config, free_port, wait_for, write_demo_data
from tests.integration.conftest import (
    BIN,
    REPO,
    _kill_processes_mentioning,
    job_dir,
    submit_job,
    wait_http,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MARK = "<!-- jobs-session:"
RAY = str(BIN / "ray")


def readme_session() -> list[str]:
    """The marked block's command lines (continuations joined, comments kept)."""
    text = (REPO / "README.md").read_text()
    assert MARK in text, "README.md lost its jobs-session block"
    block = text.split(MARK, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


@dataclass
class Session:
    """What the README's session did, and the cluster it started (still up)."""

    folder: Path
    cfg: object
    made_by_the_cli: str
    run: subprocess.CompletedProcess
    address: str
    env: dict[str, str]  # a shell of this test run that sends the cluster's token


@pytest.fixture(scope="module")
def session(tmp_path_factory, ray_start_4_cpus) -> Iterator[Session]:
    folder = tmp_path_factory.mktemp("clone") / "rayops"
    shutil.copytree(REPO / "jobs", folder / "jobs")
    for ignore in (".gitignore", ".rayignore"):  # what Ray leaves out of a working dir
        shutil.copy(REPO / ignore, folder)
    (folder / ".venv").symlink_to(BIN.parent)
    # What `make demo` leaves: raw files in the lake and the version its ingest made.
    cfg = load_config(folder / "jobs" / "configs" / "churn.yaml", base_dir=folder)
    write_demo_data(file_source(cfg).location, rows=2000, files=2)
    made_by_the_cli = ingest(cfg).id

    gcs, dashboard = free_port(), free_port()
    temp = Path(f"/tmp/rayops-readme-{uuid.uuid4().hex[:6]}")
    lines = []
    for line in readme_session():
        line = line.replace("6380", str(gcs)).replace("8265", str(dashboard))
        if re.match(r"\s*ray stop\b", line):
            continue
        if re.match(r"\s*ray start --head", line):
            line = line.split("#")[0] + (
                f" --temp-dir {temp} --ray-client-server-port {free_port()}"
                f" --dashboard-agent-listen-port {free_port()}"
                f" --dashboard-agent-grpc-port {free_port()}"
                f" --runtime-env-agent-port {free_port()}"
                f" --metrics-export-port {free_port()} --disable-usage-stats"
            )
        lines.append(line)
    script = "set -ex\n" + "\n".join(lines) + "\n"
    # A user's shell after `make demo`: a token in ~/.ray/auth_token (the test's HOME has one
    # from the session's ray.init()), none of Ray's variables that this process has set.
    assert (Path.home() / ".ray" / "auth_token").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH_"))}
    try:
        run = subprocess.run(
            ["bash", "-c", script], cwd=folder, env=env, capture_output=True, text=True, timeout=900
        )
        address = f"http://127.0.0.1:{dashboard}"
        yield Session(
            folder, cfg, made_by_the_cli, run, address, {**os.environ, "RAY_AUTH_MODE": "token"}
        )
    finally:
        _kill_processes_mentioning([str(temp), f":{gcs}"])
        shutil.rmtree(temp, ignore_errors=True)


def test_the_readme_job_session_runs_as_written(session):
    out = session.run.stdout + session.run.stderr
    assert session.run.returncode == 0, out[-5000:]
    cfg = session.cfg

    # The ingest job read the lake the CLI wrote: nothing new, the same version.
    assert f"dataset {session.made_by_the_cli} (" in out
    # The train job trained on it and logged to the MLflow store the CLI uses; its log was
    # written into the working dir while Ray packed it (.rayignore leaves it out).
    assert "epoch 2/2" in out and "epoch 2/2" in (session.folder / "train.log").read_text()
    client = MlflowClient(cfg.tracking.uri)
    champion = client.get_model_version_by_alias(cfg.model_name, "champion")
    run_data = client.get_run(champion.run_id).data
    assert run_data.tags["rayops.dataset_version"] == session.made_by_the_cli
    assert run_data.params["train.epochs"] == "2"
    # `ray job list` shows what each `rayops submit` job is.
    assert "'rayops.stage': 'ingest'" in out and "'rayops.pipeline': 'churn'" in out


@pytest.fixture
def cluster(session) -> Session:
    """The cluster the README's session started, answering."""
    wait_http(f"{session.address}/api/version", 60)
    return session


def test_bad_config_fails_the_job_with_the_key_named(tmp_path, cluster):
    workdir = job_dir(tmp_path, demo_config(tmp_path))
    (workdir / "bad.yaml").write_text("name: x\ndata: {label: y, task: guess, columns: {}}\n")
    result = submit_job(cluster.address, workdir, "jobs/ingest.py", "bad.yaml", env=cluster.env)
    assert result.returncode != 0
    job_id = re.search(r"Job '(raysubmit_\w+)' failed", result.stdout + result.stderr)[1]
    # The job's reason, not a traceback: the config error's list of invalid settings.
    last = _last_log_line(cluster, job_id)
    assert last == (
        "  data.task: Input should be 'classification' or 'forecasting' or "
        "'recommendation' or 'regression' (got 'guess')"
    )


def test_a_forecasting_config_ingests_as_a_job(tmp_path, cluster):
    """The forecasting example config (jobs/configs/demand.yaml) as a Ray job: the
    forecast's own ingest checks and the series layout, fitted in the job. Training on it
    goes through the driver every task's jobs share (the README's session runs it as a
    job; tests/integration/test_forecasting.py trains a forecaster)."""
    from rayops.data.versions import load_version
    from rayops.demo import demand
    from tests.helpers import fresh_tracking_store

    fresh_tracking_store(tmp_path / "mlflow.db")
    cfg = load_config(
        REPO / "jobs" / "configs" / "demand.yaml",
        [f"storage.root={tmp_path / 'lake'}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"],
    )
    demand.write(demand.generate(zone_count=3, weeks=4), file_source(cfg).location)
    result = submit_job(
        cluster.address, job_dir(tmp_path, cfg), "jobs/ingest.py", "pipeline.yaml", env=cluster.env
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-5000:]
    assert "dataset demand/v000001 (" in out
    for reason in (
        "ts: duplicate of an observation of the same series and step",
        "ts: not on the 1h grid of steps",
    ):
        assert reason in out
    layout = load_version(cfg, 1).preprocessor.series["layout"]
    assert len(layout["levels"]) == 3 and layout["horizon"] == 24


def _start(cluster: Session, workdir: Path, submission_id: str, *job: str) -> None:
    """Submit without waiting (retried while the job agent starts)."""
    deadline = time.monotonic() + 120
    while True:
        result = subprocess.run(
            [
                RAY,
                "job",
                "submit",
                "--address",
                cluster.address,
                "--working-dir",
                str(workdir),
                "--submission-id",
                submission_id,
                "--no-wait",
                "--",
                sys.executable,
                *job,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=cluster.env,
        )
        if result.returncode == 0:
            return
        if "No available agent" not in result.stderr or time.monotonic() > deadline:
            raise AssertionError(result.stderr[-2000:])
        time.sleep(2)


def _jobs_api(cluster: Session, method: str, path: str) -> dict:
    """Ray's job REST API (what `ray job logs` and `ray job stop` call), with the token."""
    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    reply = requests.request(
        method,
        f"{cluster.address}/api/jobs/{path}",
        timeout=30,
        headers={"Authorization": f"Bearer {token}"},
    )
    reply.raise_for_status()
    return reply.json()


def _last_log_line(cluster: Session, submission_id: str) -> str:
    logs = _jobs_api(cluster, "GET", f"{submission_id}/logs")["logs"]
    return [line for line in logs.splitlines() if line.strip()][-1]


def _stop(cluster: Session, submission_id: str) -> None:
    assert _jobs_api(cluster, "POST", f"{submission_id}/stop")["stopped"]


def test_sweep_driver_killed_mid_trial_then_resumed(tmp_path, cluster):
    """Two trials, one at a time (a grid: 2 epochs, then 16): the job is stopped once the
    first has finished and the second has a checkpoint. The stopped job says how to
    resume; the resumed sweep keeps the first trial (not trained again) and continues the
    second from its checkpoint, each epoch trained and logged once (the path `rayops train
    --resume` takes too: both go through the same driver), without unpickling what Tune
    stored."""
    from rayops import tracking
    from rayops.storage import root_of

    first, epochs = 2, 16  # the second trial's: enough that the stop lands mid-trial (an
    # epoch here takes 0.3-1 s); the first trial only has to finish
    cfg = demo_config(
        tmp_path,
        **{
            "train.epochs": epochs,
            "train.num_workers": 1,
            "train.early_stopping_patience": "null",
            "tune.enabled": True,
            "tune.search": "grid",
            "tune.search_space": {"train.epochs": {"type": "choice", "values": [first, epochs]}},
            "tune.max_concurrent_trials": 1,
            "tune.scheduler.type": "fifo",
        },
    )
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
        started = {
            info.path.split("/checkpoints/", 1)[1].split("/", 1)[0]
            for info in checkpoints.list_files()
            if info.path.endswith(".pt")
        }
        return len(done) == 1 and any(not name.endswith(tuple(done)) for name in started)

    _start(cluster, workdir, "tune-1", "jobs/tune.py", "pipeline.yaml")
    wait_for(
        second_trial_checkpointed,
        timeout_s=300,
        every_s=0.2,
        what="a finished trial and a checkpoint of the second",
    )
    _stop(cluster, "tune-1")  # the driver dies mid-trial
    wait_for(
        lambda: "resumable" in _last_log_line(cluster, "tune-1"),
        timeout_s=30,
        every_s=1,
        what="the stopped job's last line",
    )
    assert _last_log_line(cluster, "tune-1").endswith("python jobs/tune.py pipeline.yaml --resume")
    done_before = {r.data.tags[tracking.TRIAL_TAG]: r.info.run_id for r in finished_trials()}
    # Any code that can write the bucket plants payloads in Tune's pickled experiment
    # state (tuner.pkl, the searcher's): resuming must not unpickle them.
    marker = tmp_path / "pwned"
    planted = _plant_payloads(root_of(cfg.storage).join("tune"), marker)
    assert any(p.endswith("tuner.pkl") for p in planted), planted

    resumed = submit_job(
        cluster.address, workdir, "jobs/tune.py", "pipeline.yaml", "--resume", env=cluster.env
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    sweeps = client.search_runs(
        [client.get_experiment_by_name(cfg.experiment_name).experiment_id],
        "tags.`rayops.kind` = 'sweep'",
    )
    assert len(sweeps) == 1 and sweeps[0].info.status == "FINISHED"
    trials = tracking.trial_runs(cfg.tracking, cfg.experiment_name, sweeps[0].info.run_id)
    assert len(trials) == 2
    for trial_id, run_id in done_before.items():
        assert trials[trial_id] == run_id
        history = client.get_metric_history(run_id, "epoch")
        assert sorted(m.value for m in history) == list(range(1, first + 1))  # not again
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
