"""The registry's aliases: ``promote`` and ``rollback``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rayops.cli.common import BaseDirOpt, app, load
from rayops.config import TrackingConfig
from rayops.runtime import setup_logging

StoreConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help="Pipeline config (its MLflow store).")]
TrackingUriOpt = Annotated[str | None, typer.Option(help="MLflow tracking URI.")]


def _tracking(config: Path | None, tracking_uri: str | None, base_dir: Path | None
              ) -> TrackingConfig:
    setup_logging(verbose=False)
    if config is not None:
        return load(config, None, base_dir).tracking
    if tracking_uri is None:
        raise typer.BadParameter("give --config CONFIG or --tracking-uri URI")
    return TrackingConfig(uri=tracking_uri)


@app.command()
def promote(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Model version to serve.")],
    config: StoreConfigOpt = None,
    tracking_uri: TrackingUriOpt = None,
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "champion",
    base_dir: BaseDirOpt = None,
) -> None:
    """Point the alias at a version; running deployments switch to it without downtime."""
    from rayops import tracking

    previous = tracking.promote(_tracking(config, tracking_uri, base_dir), model, version,
                                alias)
    was = f" (was v{previous.version})" if previous else ""
    typer.echo(f"{model}@{alias} -> v{version}{was}")


@app.command()
def rollback(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    config: StoreConfigOpt = None,
    tracking_uri: TrackingUriOpt = None,
    alias: Annotated[str, typer.Option(help="Alias to move back.")] = "champion",
    base_dir: BaseDirOpt = None,
) -> None:
    """Point the alias back at the version it served before the last promotion."""
    from rayops import tracking

    version = tracking.rollback(_tracking(config, tracking_uri, base_dir), model, alias)
    typer.echo(f"{model}@{alias} -> v{version}")
