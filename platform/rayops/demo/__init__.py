"""The built-in demo: a synthetic customer-churn dataset and the config that runs on it."""

from importlib import resources
from pathlib import Path


def config_path() -> Path:
    """Path of the packaged demo pipeline config."""
    return Path(str(resources.files("rayops.demo").joinpath("churn.yaml")))
