"""What every benchmark script starts with: a fresh work folder, a local Ray on 127.0.0.1,
and the demo pipeline config with its object store and MLflow store in that folder."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from rayops.config import PipelineConfig, load_config
from rayops.demo import config_path
from rayops.serve.ingress import ingress_for_a_new_cluster


def start_bench(name: str, **ray_options: Any) -> Path:
    """A new ``rayops-{name}-*`` temp folder, after starting Ray (all CPUs, no dashboard, no
    progress bars); ``ray_options`` go to ``ray.init``."""
    import ray

    work = Path(tempfile.mkdtemp(prefix=f"rayops-{name}-"))
    with ingress_for_a_new_cluster():  # the ingress rayops gives a local cluster
        ray.init(
            **{
                "num_cpus": os.cpu_count(),
                "_node_ip_address": "127.0.0.1",
                "include_dashboard": False,
                "logging_level": logging.WARNING,
                **ray_options,
            }
        )
    ray.data.DataContext.get_current().enable_progress_bars = False
    return work


def demo_config(work: Path, *overrides: str) -> PipelineConfig:
    """The demo config with ``storage.root`` and ``tracking.uri`` under ``work``, then
    ``overrides`` (later ones win)."""
    return load_config(
        config_path(),
        [f"storage.root={work}/lake", f"tracking.uri=sqlite:///{work}/mlflow.db", *overrides],
    )


def package_dir(name: str) -> Path:
    """Where an installed package's files are, without importing it (benchmarks read the
    data files some packages ship)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed: make bench (or pip install -e .[bench])")
    return Path(spec.submodule_search_locations[0])
