"""The README's job session, run as written: the code block marked `jobs-session`, taken
from README.md at test time (a changed README runs its new text), in a folder laid out like
a clone after `make demo` (its jobs/ and configs, .venv, a lake with raw data and the
dataset version the demo's ingest made).

What the test changes in the text, and why: the ports (6380, 8265) become free ones; the
`ray start` line also gets its own temp dir and agent ports, so it runs beside the test
session's cluster; `ray stop`, which would stop every cluster on the machine, is left out
(the test stops its own). Every other line runs verbatim, in bash, from that folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from rayops.config import load_config
from rayops.data.ingest import file_source, ingest
from tests.helpers import free_port, write_demo_data
from tests.integration.conftest import BIN, REPO, _kill_processes_mentioning

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MARK = "<!-- jobs-session:"


def readme_session() -> list[str]:
    """The marked block's command lines (continuations joined, comments kept)."""
    text = (REPO / "README.md").read_text()
    assert MARK in text, "README.md lost its jobs-session block"
    block = text.split(MARK, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_the_readme_job_session_runs_as_written(tmp_path, ray_start_4_cpus):
    folder = tmp_path / "rayops"
    shutil.copytree(REPO / "jobs", folder / "jobs")
    shutil.copy(REPO / ".gitignore", folder)  # Ray leaves ignored files out of a working dir
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
                f" --metrics-export-port {free_port()} --disable-usage-stats")
        lines.append(line)
    script = "set -ex\n" + "\n".join(lines) + "\n"
    # A user's shell after `make demo`: a token in ~/.ray/auth_token (the test's HOME has one
    # from the session's ray.init()), none of Ray's variables that this process has set.
    assert (Path.home() / ".ray" / "auth_token").exists()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_ADDRESS", "RAY_AUTH_"))}
    try:
        run = subprocess.run(["bash", "-c", script], cwd=folder, env=env,
                             capture_output=True, text=True, timeout=900)
    finally:
        _kill_processes_mentioning([str(temp), f":{gcs}"])
        shutil.rmtree(temp, ignore_errors=True)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-5000:]

    # The ingest job read the lake the CLI wrote: nothing new, the same version.
    assert f"dataset {made_by_the_cli} (" in out
    # The train job trained on it and logged to the MLflow store the CLI uses.
    assert "epoch 2/2" in out
    client = MlflowClient(cfg.tracking.uri)
    champion = client.get_model_version_by_alias(cfg.model_name, "champion")
    run_data = client.get_run(champion.run_id).data
    assert run_data.tags["rayops.dataset_version"] == made_by_the_cli
    assert run_data.params["train.epochs"] == "2"
    # `ray job list` shows what each `rayops submit` job is.
    assert "'rayops.stage': 'ingest'" in out and "'rayops.pipeline': 'churn'" in out
