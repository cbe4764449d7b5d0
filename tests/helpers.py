"""Builders shared by tests: configs pointing at temporary stores, demo data."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rayops.config import PipelineConfig, load_config
from rayops.demo import churn, config_path
from rayops.storage import Location


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def demo_config(tmp: Path, **overrides: Any) -> PipelineConfig:
    """The packaged demo config with its stores under ``tmp`` and small, fast settings."""
    base = {
        "storage.root": str(tmp / "lake"),
        "tracking.uri": f"sqlite:///{tmp}/mlflow/mlflow.db",
        "train.epochs": 3,
        "train.batch_size": 128,
        "train.learning_rate": 0.005,
        "tune.enabled": False,
    }
    base.update(overrides)
    return load_config(config_path(), [f"{k}={v}" for k, v in base.items()])


def write_demo_data(target: Location, rows: int = 3000, seed: int = 7, files: int = 3) -> None:
    churn.write(churn.generate(rows, seed), target, files=files)


def wait_for(condition: Callable[[], object], timeout_s: float = 90, every_s: float = 0.25,
             what: str = "condition") -> None:
    """Poll ``condition`` until it is truthy; TimeoutError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout_s:g}s")
        time.sleep(every_s)
