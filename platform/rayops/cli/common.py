"""What every ``rayops`` command shares: the Typer app, the options that mean the same in
each command, and the few steps around a command (logging, loading, connecting)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from rayops.config import PipelineConfig, load_config
from rayops.runtime import Output, connect, setup_logging

app = typer.Typer(
    help="rayops: raw files in object storage -> a model served by Ray Serve.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def _version(shown: bool) -> None:
    if shown:
        from importlib.metadata import version

        typer.echo(f"rayops {version('rayops')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print rayops' version and exit."
        ),
    ] = False,
) -> None:
    """rayops: raw files in object storage -> a model served by Ray Serve."""


ConfigArg = Annotated[Path, typer.Argument(help="Pipeline config YAML.", exists=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key, e.g. --set train.epochs=3 (repeatable)."),
]
BaseDirOpt = Annotated[
    Path | None,
    typer.Option(
        help="Resolve the config's relative paths against this folder instead of the working "
        'directory (a Ray job runs in a copy of its working dir: --base-dir "$PWD").'
    ),
]
VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        help="Show Ray's and MLflow's own messages here instead of in a log file.",
    ),
]
ResumeOpt = Annotated[
    bool, typer.Option(help="Continue the last run of this pipeline whose driver died.")
]
DatasetVersionOpt = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Curated dataset version (a Delta table version) to train on; default: the latest.",
    ),
]


def load(config: Path, overrides: list[str] | None, base_dir: Path | None = None) -> PipelineConfig:
    return load_config(config, overrides or [], base_dir=base_dir)


def start(
    config: Path,
    overrides: list[str] | None,
    base_dir: Path | None,
    verbose: bool,
    check: Callable[[PipelineConfig], None] | None = None,
) -> tuple[PipelineConfig, Output]:
    """Logging, the config (and ``check`` of it, before anything starts), then Ray and the
    services it names: what a command that runs a stage does first."""
    output = setup_logging(verbose)
    cfg = load(config, overrides, base_dir)
    if check is not None:
        check(cfg)
    connect(cfg, output)
    return cfg, output


def logs_line(output: Output) -> None:
    """Where the libraries' messages went, for the end of a long command."""
    if output.log_file is not None and output.log_file.exists():  # nothing said: no file
        typer.echo(f"logs: {output.log_file} (Ray workers: {_ray_logs()})", err=True)


def _ray_logs() -> str:
    import ray

    node = ray._private.worker.global_worker.node if ray.is_initialized() else None
    if node is None:  # a client of a remote cluster has no node of its own
        return "not started"
    return str(Path(node.get_logs_dir_path()))


def wait_forever() -> None:
    typer.echo("Press Ctrl-C to stop.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        typer.echo("stopped")
