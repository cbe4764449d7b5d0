"""Test-run isolation: a private HOME and Ray temp dir, so runs never share Ray state
(auth tokens in ~/.ray, sessions in /tmp/ray) with each other or with the user."""

import os
import tempfile
from pathlib import Path

import pytest

from tests.unit_coverage import is_unit, pytest_addoption, pytest_configure  # noqa: F401 (hooks)

_RUN_DIR = Path(tempfile.mkdtemp(prefix="rayops-test-"))
(_RUN_DIR / "home").mkdir()
os.environ["HOME"] = str(_RUN_DIR / "home")
# Short path: Ray puts unix sockets under it and socket paths are limited to ~107 bytes.
os.environ["RAY_TMPDIR"] = str(_RUN_DIR / "ray")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Ray Train's controller notices a finished or failed worker group at this interval (2 s by
# default); tests run dozens of short training runs.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# Ray Train's preemption watcher (an actor per run polling for spot-instance notices) has
# nothing to watch on one machine; each run's extra process costs ~2 s of CPU.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# Ray Train's metrics callbacks (Prometheus gauges per run) feed no dashboard in tests.
os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
# Ray's log monitor lists every cluster's log folder ten times a second while it holds
# under 1000 files; tests keep worker output in the logs (log_to_driver=False): every 5 s.
os.environ.setdefault("RAY_LOG_MONITOR_MANY_FILES_THRESHOLD", "0")
os.environ.setdefault("LOG_NAME_UPDATE_INTERVAL_S", "5")
# Serve replicas and handles report their load for autoscaling every 10 s by default; the
# autoscaling test looks back 2 s.
os.environ.setdefault("RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "0.5")
# Dummy credentials for the local S3 endpoint; set before Ray starts so workers inherit them.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="session")
def run_dir() -> Path:
    return _RUN_DIR


_LOGGERS = (
    "rayops",
    "ray",
    "ray.data",
    "ray.serve",
    "ray.tune",
    "ray.train",
    "mlflow",
    "alembic",
    "urllib3",
    "optuna",
    "py.warnings",
    "filelock",
)
_ENV = (
    "MLFLOW_CONFIGURE_LOGGING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
    "RAY_AIR_NEW_OUTPUT",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)


@pytest.fixture(autouse=True)
def _process_setup_restored():
    """A test that runs the CLI in this process (CliRunner) sets up its console and log
    file; put the loggers and variables back so the next test sees a library process."""
    import logging

    saved = {
        name: (lg.handlers[:], lg.propagate, lg.level)
        for name in _LOGGERS
        if (lg := logging.getLogger(name))
    }
    env = {key: os.environ.get(key) for key in _ENV}
    yield
    for name, (handlers, propagate, level) in saved.items():
        lg = logging.getLogger(name)
        lg.handlers, lg.propagate = handlers, propagate
        lg.setLevel(level)
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    logging.captureWarnings(False)


# The slowest modules first (as `--durations` measures them), then the rest of the
# integration tests, then the unit tests: `make test` hands whole modules to two processes
# (pytest-xdist, --dist loadfile) in this order, so the long ones do not start last.
SLOWEST_FIRST = (
    "test_jobs",
    "test_serve",
    "test_recommendation",
    "test_families",
    "test_training",
    "test_forecasting",
    "test_tables",
    "test_operate",
    "test_readme",
    "test_simulated_cluster",
    "test_pipeline_local",
    "test_resume",
    "test_gcs_fault_tolerance",
    "test_kafka",
)


def _schedule_rank(item: pytest.Item) -> tuple[int, int]:
    module = item.path.stem
    rank = SLOWEST_FIRST.index(module) if module in SLOWEST_FIRST else len(SLOWEST_FIRST)
    return rank, is_unit(item)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules longest first (a stable sort: tests keep their order within a module);
    ``gpu`` tests need CUDA: skipped, with the reason, on a machine without it."""
    items.sort(key=_schedule_rank)
    gpu_tests = [item for item in items if "gpu" in item.keywords]
    if not gpu_tests:
        return
    import torch

    if torch.cuda.is_available():
        return
    for item in gpu_tests:
        item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (torch sees none)"))
