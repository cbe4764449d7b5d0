"""The built-in demos: synthetic data and the config that runs on it, per workload: customer
churn (classification, ``churn``) and hourly demand per city zone (forecasting, ``demand``)."""

from importlib import resources
from pathlib import Path

WORKLOADS = {"classification": "churn", "forecasting": "demand", "recommendation": "watching"}


def config_path(name: str = "churn") -> Path:
    """Path of a packaged demo pipeline config (``churn``, ``demand`` or ``watching``)."""
    return Path(str(resources.files("rayops.demo").joinpath(f"{name}.yaml")))
