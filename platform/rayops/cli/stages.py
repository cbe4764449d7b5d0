"""The stages: ``validate``, ``ingest``, ``train``, ``tune``, ``deploy``, ``run``,
``operate`` and ``demo``. Each is also what its Ray job runs (``jobs/STAGE.py``)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer

from rayops.cli.common import (
    BaseDirOpt,
    ConfigArg,
    DatasetVersionOpt,
    ResumeOpt,
    SetOpt,
    VerboseOpt,
    app,
    load,
    logs_line,
    start,
    wait_forever,
)
from rayops.config import PipelineConfig
from rayops.runtime import in_ray_job, say_how_to_resume_when_stopped, setup_logging

# The `rayops submit` command line a job came from (to say how to resume it).
SUBMITTED_AS_ENV = "RAYOPS_SUBMITTED_AS"


@app.command()
def validate(config: ConfigArg, overrides: SetOpt = None, base_dir: BaseDirOpt = None) -> None:
    """Check a config file and print it with every default filled in."""
    cfg = load(config, overrides, base_dir)
    typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))


@app.command()
def ingest(
    config: ConfigArg,
    overrides: SetOpt = None,
    watch: Annotated[
        bool,
        typer.Option(help="Keep polling the source for new files (or a topic's new messages)."),
    ] = False,
    interval: Annotated[
        float | None,
        typer.Option(min=1.0, help="Seconds between polls [default: data.watch_interval_s]."),
    ] = None,
    base_dir: BaseDirOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Curate what is new in the raw source into a new dataset version."""
    from rayops.data import ingest as data_ingest

    cfg, output = start(config, overrides, base_dir, verbose)

    def show(version: Any) -> None:  # the breakdown by file and reason is said above
        rows = version.manifest.rows
        typer.echo(
            f"dataset {version.id} ({version.uri}): {rows.train:,} train + {rows.valid:,} "
            f"valid rows of {rows.read:,} read, {rows.quarantine:,} quarantined"
        )

    if not watch:
        show(data_ingest.ingest(cfg))
        logs_line(output)
        return
    every = cfg.data.watch_interval_s if interval is None else interval
    typer.echo(f"watching {cfg.data.source} every {every:g}s; Ctrl-C stops")
    with contextlib.suppress(KeyboardInterrupt):
        data_ingest.watch(cfg, every, on_version=show)


def _train(
    config: Path,
    overrides: list[str] | None,
    base_dir: Path | None,
    verbose: bool,
    sweep: bool,
    resume: bool,
    dataset_version: int | None,
) -> None:
    from rayops.pipeline import train_and_register
    from rayops.tracking import where_to_look

    cfg, output = start(config, overrides, base_dir, verbose)
    submitted_as = os.environ.get(SUBMITTED_AS_ENV)
    say_how_to_resume_when_stopped(shlex.split(submitted_as) if submitted_as else None)
    typer.echo(
        train_and_register(
            cfg, sweep=sweep, resume=resume, dataset_version=dataset_version
        ).summary()
    )
    typer.echo(where_to_look(cfg.tracking))
    logs_line(output)


@app.command()
def train(
    config: ConfigArg,
    overrides: SetOpt = None,
    resume: ResumeOpt = False,
    dataset_version: DatasetVersionOpt = None,
    base_dir: BaseDirOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Train on the latest dataset version (or --dataset-version N); the model becomes
    challenger, and champion if it beats the current one on the same validation data."""
    _train(
        config,
        overrides,
        base_dir,
        verbose,
        sweep=False,
        resume=resume,
        dataset_version=dataset_version,
    )


@app.command()
def tune(
    config: ConfigArg,
    overrides: SetOpt = None,
    resume: ResumeOpt = False,
    dataset_version: DatasetVersionOpt = None,
    base_dir: BaseDirOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Sweep hyperparameters; the best model is gated against the champion like `train`."""
    _train(
        config,
        overrides,
        base_dir,
        verbose,
        sweep=True,
        resume=resume,
        dataset_version=dataset_version,
    )


@app.command()
def deploy(
    config: ConfigArg,
    overrides: SetOpt = None,
    block: Annotated[
        bool | None,
        typer.Option(
            help="Keep serving until Ctrl-C (default: yes, except in a Ray job, whose Serve "
            "application outlives it)."
        ),
    ] = None,
    emit: Annotated[
        Path | None,
        typer.Option(help="Write a Serve config file (for `serve deploy`/`serve run`) instead."),
    ] = None,
    base_dir: BaseDirOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Serve the aliased model with Ray Serve."""
    if emit is not None:
        import yaml

        cfg = load(config, overrides, base_dir)
        from rayops import serve

        emit.write_text(yaml.safe_dump(serve.serve_config(cfg), sort_keys=False))
        typer.echo(f"wrote {emit}: serve deploy {emit}  (or: serve run {emit})")
        return
    cfg, _ = start(config, overrides, base_dir, verbose)
    from rayops import serve

    url = serve.deploy(cfg)
    from rayops.tasks import task_of

    typer.echo(
        f"serving {cfg.model_name}@{cfg.serve.model_alias} at {url}{task_of(cfg.data.task).route}"
    )
    if (not in_ray_job()) if block is None else block:
        wait_forever()


@app.command()
def run(
    config: ConfigArg,
    overrides: SetOpt = None,
    serve: Annotated[bool, typer.Option(help="Deploy at the end.")] = True,
    block: Annotated[
        bool | None,
        typer.Option(
            help="Keep serving until Ctrl-C, as `deploy` does (default: yes, except in a Ray "
            "job, whose Serve application outlives it)."
        ),
    ] = None,
    base_dir: BaseDirOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """The whole pipeline: ingest -> train or sweep -> register -> deploy."""
    from rayops.pipeline import run_pipeline
    from rayops.tasks import task_of
    from rayops.tracking import where_to_look

    cfg, output = start(config, overrides, base_dir, verbose)
    result = run_pipeline(cfg, deploy=serve)
    typer.echo(result.model.summary())
    typer.echo(where_to_look(cfg.tracking))
    logs_line(output)
    if result.url:
        typer.echo(f"serving at {result.url}{task_of(cfg.data.task).route}")
        if (not in_ray_job()) if block is None else block:
            wait_forever()


@app.command()
def operate(
    config: ConfigArg,
    overrides: SetOpt = None,
    cycles: Annotated[
        int | None,
        typer.Option(min=1, help="Stop after this many cycles (default: run until stopped)."),
    ] = None,
    abandon: Annotated[
        bool,
        typer.Option(
            "--abandon",
            help="End the unfinished cycle where it stands (nothing promoted; its "
            "challenger, if not promoted, withdrawn from @challenger), then exit.",
        ),
    ] = False,
    restart_cycle: Annotated[
        bool,
        typer.Option(
            "--restart-cycle",
            help="Abandon the unfinished cycle, then run cycles as usual "
            "(the next one starts fresh).",
        ),
    ] = False,
    base_dir: BaseDirOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """The retraining loop: each cycle ingests, monitors drift, decides, retrains, gates
    (validation rows and the labelled window), shadows, promotes and watches (rolling back
    on a breach). A stopped operator resumes its cycle when started again."""
    from rayops.operate import Operator
    from rayops.operate import operate as run_loop

    if abandon or restart_cycle:
        setup_logging(verbose)
        Operator(load(config, overrides, base_dir), say=typer.echo).abandon()
        if abandon:
            return
    # what the loop needs from the serve section, checked before Ray starts
    cfg, output = start(config, overrides, base_dir, verbose, check=PipelineConfig.check_operate)
    with contextlib.suppress(KeyboardInterrupt):
        state = run_loop(cfg, cycles, say=typer.echo)
        typer.echo(f"stopped after cycle {state.cycle}: {state.facts.get('outcome', 'no retrain')}")
    logs_line(output)


@app.command()
def demo(
    rows: Annotated[int, typer.Option(min=500, help="Rows of synthetic churn data.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Seed of the data generator.")] = 7,
    port: Annotated[int, typer.Option(help="HTTP port of Ray Serve.")] = 8000,
    keep_running: Annotated[bool, typer.Option(help="Keep serving until Ctrl-C.")] = False,
    operate: Annotated[
        bool,
        typer.Option(
            "--operate",
            help="Then a later month with a shift arrives and is served with "
            "feedback; one operate cycle finds the drift, retrains, gates, shadows and "
            "promotes.",
        ),
    ] = False,
    workload: Annotated[
        str,
        typer.Option(
            help="classification: customer churn from CSV exports; forecasting: hourly demand "
            "per city zone, a day ahead; recommendation: what to watch next."
        ),
    ] = "classification",
    stream: Annotated[
        bool,
        typer.Option(
            "--stream",
            help="Instead: the workload's events (churn customers, or hourly demand "
            "observations with --workload forecasting) produced to a local Kafka topic (--rate "
            "a second for --seconds) and ingested every 5 s: versions, lag and row "
            "accounting.",
        ),
    ] = False,
    seconds: Annotated[
        float, typer.Option(min=1, help="With --stream: how long events are produced.")
    ] = 30.0,
    rate: Annotated[float, typer.Option(min=1, help="With --stream: events a second.")] = 3000.0,
    overrides: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Generate demo data, run the whole pipeline, and query the served model over HTTP."""
    from rayops.demo import WORKLOADS

    if workload not in WORKLOADS:
        raise typer.BadParameter(
            f"{workload!r}; use one of {', '.join(WORKLOADS)}", param_hint="--workload"
        )
    if stream:
        from rayops.demo.streaming import STREAMS, run_stream_demo

        if workload not in STREAMS or operate:
            raise typer.BadParameter(
                f"--stream streams the {' or '.join(STREAMS)} demo's events, without --operate",
                param_hint="--stream",
            )
        output = setup_logging(verbose)
        run_stream_demo(seconds, rate, 5.0, seed, overrides or [], output, workload)
        logs_line(output)
        return
    from rayops.demo.run import run_demo

    output = setup_logging(verbose)
    run_demo(
        rows=rows,
        seed=seed,
        port=port,
        keep_running=keep_running,
        overrides=overrides or [],
        output=output,
        operate=operate,
        workload=workload,
    )
    logs_line(output)
