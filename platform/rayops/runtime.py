"""Process setup done explicitly by entrypoints: logging, connecting to Ray, job arguments."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rayops.config import PipelineConfig, load_config

logger = logging.getLogger(__name__)


def setup_logging(level: int = logging.INFO) -> None:
    """rayops messages at ``level`` on stderr; other libraries stay at WARNING."""
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("rayops").setLevel(level)


def init_ray(address: str | None = None) -> None:
    """Connect to ``address`` (or RAY_ADDRESS, or the job's cluster), else start a local one."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    options: dict[str, Any] = {"logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **options)
    else:
        # A new local cluster: keep Ray's services on the loopback interface.
        ray.init(_node_ip_address="127.0.0.1", **options)
    logger.info("Ray resources: %s", ray.cluster_resources())


def connect(cfg: PipelineConfig) -> None:
    """Check that the object store and the tracking server answer, then connect to Ray:
    an outage ends the command in seconds with one line, before any work starts."""
    from rayops import tracking
    from rayops.storage import ensure_bucket, root_of

    ensure_bucket(root_of(cfg.storage))
    tracking.require_reachable(cfg.tracking)
    init_ray()


@dataclass(frozen=True)
class JobArgs:
    cfg: PipelineConfig
    resume: bool


def job_args(description: str, argv: Sequence[str] | None = None) -> JobArgs:
    """Parse a job's ``--config PATH [--set KEY=VALUE ...] [--resume]``, set up logging
    and connect to Ray."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="Pipeline config YAML.")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="Override a config key (repeatable).")
    parser.add_argument("--resume", action="store_true",
                        help="Continue the last run whose driver died (train, tune).")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_config(args.config, args.overrides)
    connect(cfg)
    return JobArgs(cfg, args.resume)
