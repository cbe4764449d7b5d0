"""GCS fault tolerance with the Redis on 127.0.0.1:6379 as external storage (what
cluster.yaml's `RAY_REDIS_ADDRESS` and KubeRay's `gcsFaultToleranceOptions` use): a head
whose GCS server is killed keeps answering Serve requests, and the GCS that comes back
(here restarted with the same command line, as a supervisor or KubeRay's pod restart does)
finds the application, a detached actor and its key-value state in Redis."""

from __future__ import annotations

import collections
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
import requests

from tests.helpers import free_port
from tests.integration.conftest import BIN, _kill_processes_mentioning, service_missing, wait_http

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.redis]

REDIS = ("127.0.0.1", 6379)

BEFORE = """
import sys, ray
from ray import serve
from ray.experimental import internal_kv

ray.init(address=sys.argv[1], namespace="gcs-ft")
serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[2])})

@serve.deployment(ray_actor_options={"num_cpus": 0.1})
def echo(request):
    return {"ok": True}

serve.run(echo.bind(), name="echo", route_prefix="/echo")

@ray.remote(num_cpus=0)
class Counter:
    def __init__(self):
        self.n = 0
    def add(self):
        self.n += 1
        return self.n

counter = Counter.options(name="counter", lifetime="detached").remote()
assert ray.get(counter.add.remote()) == 1
internal_kv._internal_kv_put(b"rayops-gcs-ft", b"kept")
print("ready", flush=True)
"""

AFTER = """
import sys, ray
from ray import serve
from ray.experimental import internal_kv

ray.init(address=sys.argv[1], namespace="gcs-ft")
apps = {name: str(app.status) for name, app in serve.status().applications.items()}
counter = ray.get_actor("counter")
print(apps, ray.get(counter.add.remote()), internal_kv._internal_kv_get(b"rayops-gcs-ft"),
      flush=True)
"""


def _redis_command(*parts: str) -> bytes:
    """One RESP command to the Redis server (no client library needed)."""
    payload = f"*{len(parts)}\r\n" + "".join(f"${len(p)}\r\n{p}\r\n" for p in parts)
    with socket.create_connection(REDIS, timeout=3) as conn:
        conn.sendall(payload.encode())
        time.sleep(0.2)
        return conn.recv(1 << 20)


@pytest.fixture
def redis_namespace():
    try:
        assert _redis_command("PING").startswith(b"+PONG")
    except OSError as exc:
        service_missing(f"Redis not reachable at {REDIS[0]}:{REDIS[1]}: {exc}")
    namespace = f"rayops-test-{uuid.uuid4().hex[:8]}"
    yield namespace
    keys = [
        line.decode()
        for line in _redis_command("KEYS", f"*{namespace}*").split(b"\r\n")
        if line and line[:1] not in b"*$"
    ]
    for key in keys:
        _redis_command("DEL", key)


def _gcs_server(temp: Path) -> psutil.Process:
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "gcs_server" and str(temp) in " ".join(proc.info["cmdline"] or []):
            return proc
    raise AssertionError(f"no gcs_server of {temp}")


def test_serve_keeps_answering_while_the_gcs_is_down_and_state_survives_its_restart(
    redis_namespace, run_dir
):
    temp = Path(f"/tmp/rayops-gcsft-{uuid.uuid4().hex[:6]}")
    gcs_port, http_port = free_port(), free_port()
    env = {
        **os.environ,
        "RAY_REDIS_ADDRESS": f"{REDIS[0]}:{REDIS[1]}",
        "RAY_external_storage_namespace": redis_namespace,
        "RAY_gcs_rpc_server_reconnect_timeout_s": "120",
    }
    address = f"127.0.0.1:{gcs_port}"
    try:
        subprocess.run(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--port",
                str(gcs_port),
                "--node-ip-address",
                "127.0.0.1",
                "--num-cpus",
                "2",
                "--include-dashboard",
                "false",
                "--ray-client-server-port",
                str(free_port()),
                "--dashboard-agent-listen-port",
                str(free_port()),
                "--dashboard-agent-grpc-port",
                str(free_port()),
                "--runtime-env-agent-port",
                str(free_port()),
                "--metrics-export-port",
                str(free_port()),
                "--temp-dir",
                str(temp),
                "--disable-usage-stats",
            ],
            check=True,
            capture_output=True,
            timeout=180,
            env=env,
        )
        ready = subprocess.run(
            [sys.executable, "-c", BEFORE, address, str(http_port)],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
        )
        assert "ready" in ready.stdout, ready.stderr[-3000:]
        url = f"http://127.0.0.1:{http_port}/echo"
        wait_http(url, 60)

        codes: collections.Counter[object] = collections.Counter()
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():
                try:
                    codes[requests.get(url, timeout=5).status_code] += 1
                except requests.RequestException as exc:
                    codes[type(exc).__name__] += 1
                time.sleep(0.02)

        sender = threading.Thread(target=traffic)
        sender.start()
        time.sleep(1)
        gcs = _gcs_server(temp)
        command, gcs_env = gcs.cmdline(), gcs.environ()
        gcs.kill()
        gcs.wait(10)
        before_outage = sum(codes.values())
        time.sleep(5)  # the GCS is down: Serve's proxy and replica keep answering
        during_outage = sum(codes.values()) - before_outage
        subprocess.Popen(
            command,
            env=gcs_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(5)
        stop.set()
        sender.join(30)
        assert set(codes) == {200}, dict(codes)  # not one request lost
        assert during_outage > 50, dict(codes)

        after = subprocess.run(
            [sys.executable, "-c", AFTER, address],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
        )
        assert after.returncode == 0, after.stderr[-3000:]
        apps, count, kept = after.stdout.strip().splitlines()[-1].rsplit(" ", 2)
        assert "'echo': 'RUNNING'" in apps or "ApplicationStatus.RUNNING" in apps, apps
        assert count == "2"  # the detached actor lived through it, state and all
        assert kept == "b'kept'"
        assert requests.get(url, timeout=10).status_code == 200
    finally:
        _kill_processes_mentioning([str(temp), f":{gcs_port}"])
