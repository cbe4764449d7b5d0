"""The registry's aliases: ``promote`` and ``rollback``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rayops.cli.common import BaseDirOpt, app, load
from rayops.config import TrackingConfig
from rayops.errors import ConfigError
from rayops.runtime import setup_logging

StoreConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Pipeline config (its MLflow store).")
]
TrackingUriOpt = Annotated[str | None, typer.Option(help="MLflow tracking URI.")]


def _tracking(
    config: Path | None, tracking_uri: str | None, base_dir: Path | None
) -> TrackingConfig:
    setup_logging(verbose=False)
    if config is not None:
        found = load(config, None, base_dir).tracking
    elif tracking_uri is None:
        raise typer.BadParameter("give --config CONFIG or --tracking-uri URI")
    else:
        try:
            found = TrackingConfig.model_validate({"uri": tracking_uri})
        except ValueError as exc:  # pydantic's ValidationError
            reason = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
            raise ConfigError(
                f"--tracking-uri {tracking_uri!r}: {reason.removeprefix('Value error, ')}"
            ) from None
    from rayops import tracking

    tracking.require_reachable(found)  # a server that is down: one line, not minutes of retries
    return found


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

    previous = tracking.promote(_tracking(config, tracking_uri, base_dir), model, version, alias)
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


def parse_model(spec: str | None, default_name: str) -> tuple[str, str | None, str | None]:
    """``[NAME@]ALIAS``, ``[NAME@]VERSION`` or ``NAME`` -> (name, alias, version); None:
    the newest version of the config's model."""
    if not spec:
        return default_name, None, None
    name, at, which = spec.rpartition("@")
    if not at:
        return (default_name, None, spec) if spec.isdigit() else (spec, None, None)
    name = name or default_name
    return (name, None, which) if which.isdigit() else (name, which, None)


@app.command()
def check(
    config: Annotated[Path, typer.Argument(help="Pipeline config YAML (its checks: section).")],
    model: Annotated[
        str | None,
        typer.Option(
            help="NAME@ALIAS, NAME@VERSION, @ALIAS or VERSION (default: the newest registered "
            "version of the config's model)."
        ),
    ] = None,
    dataset_version: Annotated[
        int | None, typer.Option(min=1, help="Curated dataset version (default: latest).")
    ] = None,
    junit: Annotated[Path | None, typer.Option(help="Write JUnit XML here.")] = None,
    report: Annotated[Path | None, typer.Option(help="Write the Markdown report here.")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key (repeatable).")
    ] = None,
    base_dir: BaseDirOpt = None,
) -> None:
    """Run the config's declared checks on a registered model: one line per check, the
    JUnit XML and Markdown reports (also logged with the model's MLflow run). Exits 1
    when a check fails."""
    from rayops import tracking
    from rayops.data.versions import load_version
    from rayops.gate import check_model

    setup_logging(verbose=False)
    cfg = load(config, overrides, base_dir)
    if not cfg.checks.declared:
        raise typer.BadParameter(
            f"{config} declares no checks (a checks: section)", param_hint="CONFIG"
        )
    name, alias, version = parse_model(model, cfg.model_name)
    chosen = (
        tracking.resolve_alias(cfg.tracking, name, alias)
        if alias
        else tracking.registered_version(cfg.tracking, name, version)
    )
    dataset = load_version(cfg, dataset_version)
    found = check_model(cfg, chosen, dataset)
    for wanted, text in ((junit, found.junit), (report, found.markdown)):
        if wanted is not None:
            wanted.parent.mkdir(parents=True, exist_ok=True)
            wanted.write_text(text())
    for line in found.lines():
        typer.echo(line)
    if not found.passed:
        raise typer.Exit(1)
