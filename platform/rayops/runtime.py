"""Process setup done explicitly by entrypoints: logging, connecting to Ray, and how a
command ends (one line on error; how to resume when a job is stopped)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayops.config import PipelineConfig
from rayops.errors import rayops_error_in

logger = logging.getLogger(__name__)


# Loggers of the libraries under rayops; quiet mode sends them to the log file. Ray's,
# Ray Data's and Serve's get their console handlers when first imported.
_LIBRARIES = (
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
KEEP_LOGS = 50  # a command's log files beyond the newest this many are removed


@dataclass(frozen=True)
class Output:
    """Where a process's messages go: rayops' progress to the console, and, unless
    verbose, everything Ray and MLflow say to ``log_file``."""

    verbose: bool
    log_file: Path | None


def setup_logging(verbose: bool = True) -> Output:
    """rayops' progress on stderr as plain lines. Verbose: the libraries' messages too
    (warnings and above). Quiet: theirs go to a log file (its path is returned) and Ray
    workers' output stays in Ray's session logs."""
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    ours = logging.getLogger("rayops")
    ours.handlers, ours.propagate = [console], False
    ours.setLevel(logging.INFO)
    if verbose:
        logging.basicConfig(
            level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        return Output(True, None)
    # MLflow and Ray configure their own loggers when first imported: ask MLflow not to,
    # and import Ray now so that its handlers can be replaced.
    os.environ["MLFLOW_CONFIGURE_LOGGING"] = "false"
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Tune's status tables and experiment banners: rayops prints a line per trial instead.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray.data
    import ray.serve  # noqa: F401

    folder = Path(os.environ.get("RAYOPS_LOG_DIR", "~/.rayops/logs")).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    prune_logs(folder, KEEP_LOGS - 1)
    log_file = folder / f"rayops-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    handler = logging.FileHandler(log_file, delay=True)  # no file until something is said
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in _LIBRARIES:
        library = logging.getLogger(name)
        library.handlers, library.propagate = [handler], False
        library.setLevel(logging.INFO)
    logging.captureWarnings(True)
    ours.addHandler(handler)
    return Output(False, log_file)


def prune_logs(folder: Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` of the commands' log files in ``folder``; returns
    those removed (one another process still writes to is left alone on error)."""
    logs = sorted(folder.glob("rayops-*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
    removed = []
    for old in logs[keep:]:
        with contextlib.suppress(OSError):
            old.unlink()
            removed.append(old)
    return removed


@contextlib.contextmanager
def environment_kept(names: Iterable[str]) -> Iterator[None]:
    """Put these environment variables back as they were when the block ends."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def init_ray(address: str | None = None, log_to_driver: bool = True) -> None:
    """Connect to ``address`` (or RAY_ADDRESS, or the job's cluster), else start a local
    one. ``log_to_driver=False`` leaves Ray workers' output in Ray's session logs."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": log_to_driver}
    if address:
        ray.init(address=address, **options)
    else:
        # A new local cluster: keep Ray's services on the loopback interface, and Serve's
        # ingress is HAProxy on loopback (RAY_SERVE_ENABLE_HA_PROXY=0: Serve's proxy).
        from rayops.serve.ingress import ingress_for_a_new_cluster

        with ingress_for_a_new_cluster():
            ray.init(_node_ip_address="127.0.0.1", **options)
    if not log_to_driver:
        import ray.data

        # Ray Data's bar is the progress bar of the long data steps (ingest, large reads):
        # kept on a terminal, where it redraws in place; off in logs and pipes.
        ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
    resources = ray.cluster_resources()
    logger.info(
        "Ray: %s CPUs, %s GPUs (%s)",
        f"{resources.get('CPU', 0):g}",
        f"{resources.get('GPU', 0):g}",
        address or "local",
    )


def connect(cfg: PipelineConfig, output: Output | None = None) -> None:
    """Check that the object store and the tracking server answer, then connect to Ray:
    an outage ends the command in seconds with one line, before any work starts."""
    from rayops import tracking
    from rayops.storage import ensure_bucket, root_of

    ensure_bucket(root_of(cfg.storage))
    tracking.require_reachable(cfg.tracking)
    init_ray(log_to_driver=output is None or output.verbose)


def in_ray_job() -> bool:
    """True in the driver of a Ray job (`ray job submit`), which the job supervisor starts
    with its job config in the environment."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


@contextlib.contextmanager
def errors_in_one_line() -> Iterator[None]:
    """A failed command or job ends with one line on stderr, its reason, and exit code 2;
    an error rayops did not expect keeps its traceback."""
    try:
        yield
    except Exception as exc:
        error = rayops_error_in(exc)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


@contextlib.contextmanager
def ctrl_c_restored() -> Iterator[None]:
    """The process's SIGINT handler put back after a run or a sweep. Ray Train's and Ray
    Tune's ``fit()`` install their own (Ctrl-C aborts the run) and leave it there: afterwards
    Ctrl-C in a command that goes on (``run`` serving, ``demo --keep-running``, ``operate``
    looping) asked a finished run to abort and the command kept running."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def say_how_to_resume_when_stopped(command: Sequence[str] | None = None) -> None:
    """In a Ray job: `ray job stop` sends SIGTERM; say that the run can be continued and how
    (``command``, default this job's own, with ``--resume``), then end as the signal would:
    what is stored stays as it is, which --resume needs."""
    if not in_ray_job():
        return
    again = list(command) if command else ["python", *sys.argv]
    again = [a for a in again if a != "--resume"] + ["--resume"]

    def stopped(signum: int, frame: Any) -> None:
        print(
            f"stopped: the run is resumable; submit it again with --resume: {' '.join(again)}",
            file=sys.stderr,
            flush=True,
        )
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stopped)
