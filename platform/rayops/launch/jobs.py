"""``rayops submit STAGE CONFIG``: one pipeline stage as a Ray job.

Only the config travels (a working directory holding ``pipeline.yaml``; rayops itself is
installed where the job runs: the venv of a cluster on this machine, the image on a
cluster). The job runs the same command as the CLI (``python -m rayops STAGE
pipeline.yaml``), so it prints the same progress and ends with the same one-line error.

Paths mean what they mean here: on a cluster whose nodes all run on this machine, relative
paths resolve against the folder you submit from (``--base-dir``) and the job runs this
Python; on any other cluster (another address, or a remote head tunnelled to 127.0.0.1) a
relative path cannot be right, and the submission is refused with the key named before
anything runs.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rayops.config import PipelineConfig, load_config, local_paths
from rayops.errors import ConfigError, RayopsError, one_line

# The CLI command each stage runs in its job.
STAGES: dict[str, list[str]] = {
    "ingest": ["ingest"],
    "train": ["train"],
    "tune": ["tune"],
    "deploy": ["deploy"],
    "pipeline": ["run"],
    "operate": ["operate"],  # runs until stopped; resubmitted, it resumes its cycle
}
RESUMABLE = ("train", "tune")
# The driver's own share: it plans Ray Data reads, evaluates and logs to MLflow. Reserved so
# the scheduler counts it; small, so a 2-CPU cluster still fits the demo's workers beside it.
DRIVER_CPUS = 0.5
DEFAULT_ADDRESS = "http://127.0.0.1:8265"


@dataclass(frozen=True)
class Submission:
    submission_id: str
    address: str
    entrypoint: str
    metadata: dict[str, str]


def is_loopback(address: str) -> bool:
    """A dashboard address on this machine (its cluster may still be elsewhere: `ray
    dashboard cluster.yaml` forwards a remote head's dashboard to 127.0.0.1:8265)."""
    host = urlparse(address if "://" in address else f"http://{address}").hostname
    return host in {"127.0.0.1", "localhost", "::1"}


def this_machines_addresses() -> set[str]:
    import psutil

    return {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}


def use_the_token_if_there_is_one() -> None:
    """What `ray start` and `ray.init()` do: with RAY_AUTH_MODE unset and a token on this
    machine (~/.ray/auth_token, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH), send it. (Ray's job
    CLI needs RAY_AUTH_MODE=token in the environment for that.)"""
    if "RAY_AUTH_MODE" in os.environ:
        return
    from ray._private.authentication.authentication_token_setup import _enable_token_auth
    from ray._raylet import AuthenticationTokenLoader  # type: ignore[attr-defined]

    if AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        _enable_token_auth()


def cluster_is_this_machine(address: str) -> bool:
    """Every alive node of the cluster behind ``address`` runs on this machine: its paths
    and its Python are ours. Asks the cluster (token-authenticated state API)."""
    if not is_loopback(address):
        return False
    from ray.util.state import list_nodes

    try:
        nodes = list_nodes(
            address=address, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False
        )
    except Exception as exc:  # any failure: the dashboard did not answer
        raise RayopsError(
            f"cannot ask the Ray cluster at {address} for its nodes: {one_line(exc)}"
        ) from None
    return all_on_this_machine([n.node_ip for n in nodes])


def all_on_this_machine(node_ips: list[str]) -> bool:
    return bool(node_ips) and set(node_ips) <= this_machines_addresses()


def relative_keys(
    config: Path, overrides: list[str], loaded: PipelineConfig | None = None
) -> dict[str, str]:
    """Keys whose value is a relative local path: they resolve differently from two
    folders. Values as they resolve from the working directory (``loaded``: the config
    already loaded from there)."""
    here = local_paths(loaded or load_config(config, overrides))
    elsewhere = local_paths(load_config(config, overrides, base_dir="/nonexistent-base"))
    return {key: value for key, value in here.items() if elsewhere.get(key) != value}


def entrypoint(
    stage: str, local: bool, overrides: list[str], resume: bool, dataset_version: int | None
) -> list[str]:
    if stage not in STAGES:
        raise ConfigError(f"stage {stage!r} is not one of {', '.join(STAGES)}")
    if resume and stage not in RESUMABLE:
        raise ConfigError(f"--resume continues a train or tune run, not {stage!r}")
    # A cluster on this machine runs this very interpreter (and its venv): `python` on the
    # PATH of whoever started Ray may be another one. A cluster's nodes run the image's.
    command = [
        sys.executable if local else "python",
        "-m",
        "rayops",
        *STAGES[stage],
        "pipeline.yaml",
    ]
    if local:
        command += ["--base-dir", os.getcwd()]
    for override in overrides:
        command += ["--set", override]
    if resume:
        command.append("--resume")
    if dataset_version is not None:
        command += ["--dataset-version", str(dataset_version)]
    return command


def submit(
    stage: str,
    config: Path,
    overrides: list[str] | None = None,
    address: str = DEFAULT_ADDRESS,
    resume: bool = False,
    dataset_version: int | None = None,
    driver_cpus: float = DRIVER_CPUS,
    env: dict[str, str] | None = None,
    on_this_machine: bool | None = None,
    client: Any = None,
) -> Submission:
    """Validate, then submit ``stage`` of ``config`` to the Ray cluster at ``address``
    (``on_this_machine``: whether its nodes run here; default: ask the cluster)."""
    if not re.match(r"^(https?|ray)://[^\s/:]+(:\d+)?/?$", address):
        raise ConfigError(
            f"--address {address!r} is not a cluster address such as http://127.0.0.1:8265 "
            "(the head's dashboard)"
        )
    overrides = list(overrides or [])
    cfg = load_config(config, overrides)  # a bad config fails here, before anything travels
    use_the_token_if_there_is_one()
    local = cluster_is_this_machine(address) if on_this_machine is None else on_this_machine
    if not local:
        for key, value in relative_keys(config, overrides, cfg).items():
            raise ConfigError(
                f"{key} is a relative path (here: {value}), which means nothing on the cluster "
                f"at {address}, whose nodes are not this machine: use an s3:// URI, or an "
                "absolute path every node shares"
            )
    command = entrypoint(stage, local, overrides, resume, dataset_version)
    text = config.read_bytes() + "\n".join(overrides).encode()
    metadata = {
        "rayops.pipeline": cfg.name,
        "rayops.stage": stage,
        "rayops.config": str(config),
        "rayops.config_sha256": hashlib.sha256(text).hexdigest()[:16],
    }
    submission_id = (
        f"rayops-{cfg.name}-{stage}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    )
    workdir = Path(tempfile.mkdtemp(prefix="rayops-submit-"))
    try:
        shutil.copyfile(config, workdir / "pipeline.yaml")
        if client is None:
            from ray.job_submission import JobSubmissionClient

            client = JobSubmissionClient(address)
        client.submit_job(
            entrypoint=shlex.join(command),
            submission_id=submission_id,
            runtime_env={"working_dir": str(workdir), "env_vars": dict(env or {})},
            metadata=metadata,
            entrypoint_num_cpus=driver_cpus,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return Submission(submission_id, address, shlex.join(command), metadata)


def follow(submission: Submission, client: Any = None) -> str:
    """Print the job's log as it comes; its final status (SUCCEEDED, FAILED, STOPPED)."""
    import asyncio

    from ray.job_submission import JobSubmissionClient

    client = client or JobSubmissionClient(submission.address)

    async def tail() -> None:
        async for lines in client.tail_job_logs(submission.submission_id):
            print(lines, end="", flush=True)

    asyncio.run(tail())
    return str(client.get_job_status(submission.submission_id).value)
