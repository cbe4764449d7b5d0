"""The ``rayops`` command line: parses arguments and calls library functions, nothing more."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from rayops.config import PipelineConfig, load_config
from rayops.runtime import (
    Output,
    connect,
    errors_in_one_line,
    say_how_to_resume_when_stopped,
    setup_logging,
)
from rayops.submit import DEFAULT_ADDRESS, DRIVER_CPUS

logger = logging.getLogger(__name__)

app = typer.Typer(help="rayops: raw files in object storage -> a model served by Ray Serve.",
                  no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)

ConfigArg = Annotated[Path, typer.Argument(help="Pipeline config YAML.", exists=False)]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a config key, e.g. --set train.epochs=3 (repeatable).")]


_output = Output(verbose=True, log_file=None)  # set once per process by `options`
_base_dir: Path | None = None  # set once per process by `options`


@app.callback()
def options(
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Show Ray's and MLflow's own messages here instead of in "
        "a log file.")] = False,
    base_dir: Annotated[Path | None, typer.Option(
        help="Resolve the config's relative paths against this folder instead of the "
        "working directory (what `rayops submit` passes to a job).")] = None,
) -> None:
    """rayops: raw files in object storage -> a model served by Ray Serve."""
    global _output, _base_dir
    _output = setup_logging(verbose)
    _base_dir = base_dir


def _load(config: Path, overrides: list[str] | None) -> PipelineConfig:
    return load_config(config, overrides or [], base_dir=_base_dir)


def _connect(cfg: PipelineConfig) -> None:
    connect(cfg, _output)


def _logs_line() -> None:
    """Where the libraries' messages went, for the end of a long command."""
    if _output.log_file is not None:
        typer.echo(f"logs: {_output.log_file} (Ray workers: {_ray_logs()})", err=True)


def _ray_logs() -> str:
    import ray

    if not ray.is_initialized():
        return "not started"
    return str(Path(ray._private.worker.global_worker.node.get_logs_dir_path()))


def _echo(title: str, payload: dict[str, Any]) -> None:
    typer.echo(f"{title}\n{json.dumps(payload, indent=2, default=str)}")


@app.command()
def validate(config: ConfigArg, overrides: SetOpt = None) -> None:
    """Check a config file and print it with every default filled in."""
    cfg = _load(config, overrides)
    typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))


@app.command()
def ingest(
    config: ConfigArg,
    overrides: SetOpt = None,
    watch: Annotated[bool, typer.Option(help="Keep polling the source for new files.")] = False,
    interval: Annotated[float, typer.Option(min=1.0, help="Seconds between polls.")] = 30.0,
) -> None:
    """Curate what is new in the raw source into a new dataset version."""
    from rayops.data import ingest as data_ingest

    cfg = _load(config, overrides)
    _connect(cfg)

    def show(version: Any) -> None:
        _echo(f"dataset {version.id} ({version.uri})",
              {"rows": version.manifest["rows"],
               "quarantine_reasons": version.manifest["quarantine_reasons"],
               "unreadable": version.manifest["unreadable"],
               "failed_this_ingest": version.manifest["ingest"]["failed"]})

    if not watch:
        show(data_ingest.ingest(cfg))
        _logs_line()
        return
    typer.echo(f"watching {cfg.data.source} every {interval:.0f}s; Ctrl-C stops")
    with contextlib.suppress(KeyboardInterrupt):
        data_ingest.watch(cfg, interval, on_version=show)


ResumeOpt = Annotated[bool, typer.Option(
    help="Continue the last run of this pipeline whose driver died.")]
DatasetVersionOpt = Annotated[int | None, typer.Option(
    min=1, help="Curated dataset version (a Delta table version) to train on; default: "
    "the latest.")]


def _train(config: Path, overrides: list[str] | None, sweep: bool, resume: bool,
           dataset_version: int | None) -> None:
    from rayops.pipeline import train_and_register

    cfg = _load(config, overrides)
    _connect(cfg)
    submitted_as = os.environ.get(SUBMITTED_AS_ENV)
    say_how_to_resume_when_stopped(shlex.split(submitted_as) if submitted_as else None)
    typer.echo(train_and_register(cfg, sweep=sweep, resume=resume,
                                  dataset_version=dataset_version).summary())
    _logs_line()


@app.command()
def train(config: ConfigArg, overrides: SetOpt = None, resume: ResumeOpt = False,
          dataset_version: DatasetVersionOpt = None) -> None:
    """Train on the latest dataset version (or --dataset-version N); the model becomes
    challenger, and champion if it beats the current one on the same validation data."""
    _train(config, overrides, sweep=False, resume=resume, dataset_version=dataset_version)


@app.command()
def tune(config: ConfigArg, overrides: SetOpt = None, resume: ResumeOpt = False,
         dataset_version: DatasetVersionOpt = None) -> None:
    """Sweep hyperparameters; the best model is gated against the champion like `train`."""
    _train(config, overrides, sweep=True, resume=resume, dataset_version=dataset_version)


@app.command()
def deploy(
    config: ConfigArg,
    overrides: SetOpt = None,
    block: Annotated[bool, typer.Option(help="Keep serving until Ctrl-C.")] = True,
    emit: Annotated[Path | None, typer.Option(
        help="Write a Serve config file (for `serve deploy`/`serve run`) instead.")] = None,
) -> None:
    """Serve the aliased model with Ray Serve."""
    from rayops import serve

    cfg = _load(config, overrides)
    if emit is not None:
        import yaml

        emit.write_text(yaml.safe_dump(serve.serve_config(cfg), sort_keys=False))
        typer.echo(f"wrote {emit}: serve deploy {emit}  (or: serve run {emit})")
        return
    _connect(cfg)
    url = serve.deploy(cfg)
    typer.echo(f"serving {cfg.model_name}@{cfg.serve.model_alias} at {url}/predict")
    if block:
        _wait_forever()


def _tracking(config: Path | None, tracking_uri: str | None) -> Any:
    from rayops.config import TrackingConfig

    if config is not None:
        return _load(config, None).tracking
    if tracking_uri is None:
        raise typer.BadParameter("give --config CONFIG or --tracking-uri URI")
    return TrackingConfig(uri=tracking_uri)


StoreConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help="Pipeline config (its MLflow store).")]
TrackingUriOpt = Annotated[str | None, typer.Option(help="MLflow tracking URI.")]


@app.command()
def promote(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Model version to serve.")],
    config: StoreConfigOpt = None,
    tracking_uri: TrackingUriOpt = None,
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "champion",
) -> None:
    """Point the alias at a version; running deployments switch to it without downtime."""
    from rayops import tracking

    previous = tracking.promote(_tracking(config, tracking_uri), model, version, alias)
    was = f" (was v{previous.version})" if previous else ""
    typer.echo(f"{model}@{alias} -> v{version}{was}")


@app.command()
def rollback(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    config: StoreConfigOpt = None,
    tracking_uri: TrackingUriOpt = None,
    alias: Annotated[str, typer.Option(help="Alias to move back.")] = "champion",
) -> None:
    """Point the alias back at the version it served before the last promotion."""
    from rayops import tracking

    version = tracking.rollback(_tracking(config, tracking_uri), model, alias)
    typer.echo(f"{model}@{alias} -> v{version}")


@app.command()
def predict(
    file: Annotated[Path, typer.Argument(help="Records: .csv, .jsonl or a .json array.")],
    url: Annotated[str, typer.Option(help="Base URL of the API, e.g. http://127.0.0.1:8000")],
    output: Annotated[Path | None, typer.Option(help="Write JSON lines here (default: stdout).")
                      ] = None,
    chunk: Annotated[int, typer.Option(min=1, help="Records per request.")] = 500,
    token_env: Annotated[str | None, typer.Option(
        help="Environment variable holding the bearer token.")] = None,
) -> None:
    """Send a file of records to a running deployment and print or write the predictions."""
    from rayops.serve.client import predict_file

    lines = predict_file(file, url, chunk, token_env)
    if output is None:
        for line in lines:
            typer.echo(line)
    else:
        output.write_text("".join(f"{line}\n" for line in lines))
        typer.echo(f"wrote {len(lines)} predictions to {output}")


@app.command()
def run(config: ConfigArg, overrides: SetOpt = None,
        serve: Annotated[bool, typer.Option(help="Deploy at the end.")] = True,
        block: Annotated[bool, typer.Option(help="Keep serving until Ctrl-C.")] = False) -> None:
    """The whole pipeline: ingest -> train or sweep -> register -> deploy."""
    from rayops.pipeline import run_pipeline

    cfg = _load(config, overrides)
    _connect(cfg)
    result = run_pipeline(cfg, deploy=serve)
    typer.echo(result.model.summary())
    _logs_line()
    if result.url:
        typer.echo(f"serving at {result.url}/predict")
        if block:
            _wait_forever()


@app.command()
def demo(
    rows: Annotated[int, typer.Option(min=500, help="Rows of synthetic churn data.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Seed of the data generator.")] = 7,
    port: Annotated[int, typer.Option(help="HTTP port of Ray Serve.")] = 8000,
    keep_running: Annotated[bool, typer.Option(help="Keep serving until Ctrl-C.")] = False,
    operate: Annotated[bool, typer.Option(
        "--operate", help="Then a later month with a shift arrives and is served with "
        "feedback; one operate cycle finds the drift, retrains, gates, shadows and "
        "promotes.")] = False,
    overrides: SetOpt = None,
) -> None:
    """Generate demo data, run the whole pipeline, and query the served model over HTTP."""
    from rayops.demo.run import run_demo

    run_demo(rows=rows, seed=seed, port=port, keep_running=keep_running,
             overrides=overrides or [], output=_output, operate=operate)
    _logs_line()


@app.command()
def k8s(
    config: ConfigArg,
    image: Annotated[str, typer.Option(
        help="rayops' image without the -cpu/-gpu suffix, e.g. registry/rayops:0.1.0.")],
    cluster: Annotated[Path, typer.Option(
        help="cluster.yaml whose node types become the worker groups.")] = Path("cluster.yaml"),
    redis: Annotated[str, typer.Option(
        help="Redis for the RayService's GCS fault tolerance (host:port).")] = "redis:6379",
    output: Annotated[Path, typer.Option(help="Folder for the manifests.")] = Path("k8s"),
    overrides: SetOpt = None,
) -> None:
    """Write KubeRay manifests: ConfigMap, RayCluster, RayJob (ingest and train) and
    RayService (serving, GCS fault tolerance with Redis), token authentication on."""
    import yaml

    from rayops.k8s import manifests

    cfg = _load(config, overrides)
    output.mkdir(parents=True, exist_ok=True)
    for manifest in manifests(cfg, image, cluster, redis_address=redis):
        target = output / f"{manifest['kind'].lower()}.yaml"
        target.write_text(yaml.safe_dump(manifest, sort_keys=False))
        typer.echo(f"wrote {target}")
    typer.echo(f"kubectl apply -f {output}/configmap.yaml -f {output}/raycluster.yaml "
               f"(or rayjob.yaml, rayservice.yaml)")


# The `rayops submit` command line a job came from (to say how to resume it).
SUBMITTED_AS_ENV = "RAYOPS_SUBMITTED_AS"


@app.command()
def submit(
    stage: Annotated[str, typer.Argument(
        help="ingest, train, tune, deploy or pipeline (every stage, then serve).")],
    config: ConfigArg,
    overrides: SetOpt = None,
    address: Annotated[str, typer.Option(
        envvar="RAY_API_SERVER_ADDRESS",
        help="The cluster's dashboard (Ray job API).")] = DEFAULT_ADDRESS,
    wait: Annotated[bool, typer.Option(
        help="Follow the job's log until it ends (exit status: the job's).")] = True,
    resume: ResumeOpt = False,
    dataset_version: DatasetVersionOpt = None,
    driver_cpus: Annotated[float, typer.Option(
        min=0.0, help="CPUs the job's driver reserves (its own work: planning, "
        "evaluation, logging).")] = DRIVER_CPUS,
) -> None:
    """Submit a stage as a Ray job: only the config travels, relative paths mean this
    folder (a cluster on this machine) or are refused (another address)."""
    from rayops import submit as jobs

    argv = ["rayops", "submit", stage, str(config), *(f"--set={o}" for o in overrides or [])]
    submission = jobs.submit(stage, config, overrides, address, resume=resume,
                             dataset_version=dataset_version, driver_cpus=driver_cpus,
                             env={SUBMITTED_AS_ENV: shlex.join(argv)})
    typer.echo(f"submitted {submission.submission_id} to {address}: {stage} of "
               f"{submission.metadata['rayops.pipeline']} ({config})")
    typer.echo(f"follow: ray job logs -f --address {address} {submission.submission_id}")
    typer.echo(f"stop:   ray job stop --address {address} {submission.submission_id}")
    if not wait:
        return
    status = jobs.follow(submission)
    typer.echo(f"job {submission.submission_id}: {status}")
    if status != "SUCCEEDED":
        raise SystemExit(1)


@app.command("simulated-cluster")
def simulated_cluster(
    cluster: Annotated[Path, typer.Option(
        help="cluster.yaml whose node types the simulation takes.")] = Path("cluster.yaml"),
    port: Annotated[int, typer.Option(help="The head's GCS port (Redis may hold 6379).")
                    ] = 6380,
    idle_timeout_minutes: Annotated[float | None, typer.Option(
        help="Idle workers are removed after this (default: cluster.yaml's).")] = None,
    output: Annotated[Path, typer.Option(help="Autoscaling config to write.")
                      ] = Path("simulated-cluster.yaml"),
) -> None:
    """Write an autoscaling config with cluster.yaml's node types for Ray's fake
    multi-node provider and print the `ray start` that runs it on this machine: the real
    autoscaler launching and removing local nodes, token authentication on."""
    import yaml

    from rayops.cluster import (
        SIMULATED_ENV,
        read_shape,
        shell_line,
        simulated_config,
        simulated_start_command,
    )

    shape = read_shape(cluster)
    output.write_text(yaml.safe_dump(
        simulated_config(shape, port, idle_timeout_minutes), sort_keys=False))
    typer.echo(f"wrote {output}: head {shape.head.resources}, "
               + ", ".join(f"{t.name} {t.resources} x{t.min_workers}-{t.max_workers}"
                           for t in shape.workers))
    typer.echo("ray get-auth-token --generate   # once: ~/.ray/auth_token")
    typer.echo(shell_line(simulated_start_command(shape, output, port), SIMULATED_ENV))
    typer.echo("ray stop   # ends it, simulated nodes included")


@app.command()
def quarantine(
    config: ConfigArg,
    overrides: SetOpt = None,
    version: Annotated[int | None, typer.Option(help="Dataset version (default: latest).")
                       ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Rows to show.")] = 20,
) -> None:
    """Show rows a dataset version rejected: source file, line, reason, original values."""
    from rayops.data.versions import load_version

    cfg = _load(config, overrides)
    chosen = load_version(cfg, version)
    rows = chosen.quarantine(limit)
    typer.echo(f"{chosen.id}: {chosen.manifest['rows']['quarantine']} quarantined row(s), "
               f"{len(chosen.manifest['unreadable'])} unreadable file(s) "
               f"(table {chosen.root.join('quarantine').uri})")
    for row in rows.to_pylist():
        typer.echo(f"{row['source_file']}:{row['line'] or '-'}  {row['reason']}  "
                   f"{row['raw'] or ''}")


@app.command()
def monitor(
    config: ConfigArg,
    records: Annotated[Path | None, typer.Option(
        help="Records to judge: a CSV, JSON Lines or Parquet file of feature columns (and "
        "optionally a 'prediction' column). Default: the prediction log's last window.")
    ] = None,
    window_hours: Annotated[float, typer.Option(
        min=0.01, help="The prediction log's window, in hours.")] = 24.0,
    fmt: Annotated[str, typer.Option("--format", help="csv, json (lines) or parquet.")
                   ] = "csv",
    overrides: SetOpt = None,
    alias: Annotated[str, typer.Option(help="The model whose training data is the "
                                            "reference.")] = "champion",
    output: Annotated[Path | None, typer.Option(help="Also write drift_report.json and "
                                                     ".html here.")] = None,
    fail_on_drift: Annotated[bool, typer.Option(help="Exit with status 3 when the window "
                                                     "has drifted (for schedulers).")] = False,
) -> None:
    """Drift of a window of records against the serving model's training profile (PSI and
    Jensen-Shannon distance per feature); the report is logged to MLflow."""
    from rayops.monitor.report import (
        monitor_records,
        read_records,
        read_window,
        table_lines,
        write_reports,
    )

    cfg = _load(config, overrides)
    window = (read_window(cfg, window_hours) if records is None
              else read_records(records, fmt))
    result = monitor_records(cfg, window, alias)
    for line in table_lines(result):
        typer.echo(line)
    if output is not None:
        for path in write_reports(result, output):
            typer.echo(f"wrote {path}")
    typer.echo(f"MLflow run {result.run_id} (experiment {cfg.experiment_name})")
    if fail_on_drift and result.report.verdict == "drift":
        raise typer.Exit(3)


@app.command()
def feedback(
    config: ConfigArg,
    labels: Annotated[Path, typer.Argument(help="True labels: a CSV, JSON Lines or Parquet "
                                                "file with request_id, label and optionally "
                                                "record_index.")],
    fmt: Annotated[str, typer.Option("--format", help="csv, json (lines) or parquet.")
                   ] = "csv",
    overrides: SetOpt = None,
    window_hours: Annotated[float | None, typer.Option(
        help="Live metrics over the records served in this many hours (default: all).")
    ] = None,
) -> None:
    """Append true labels for served records, then show each model version's live
    metrics (the labels joined with the prediction log)."""
    from rayops.monitor.feedback import append_feedback, live_metrics
    from rayops.monitor.report import read_records

    cfg = _load(config, overrides)
    appended = append_feedback(cfg, read_records(labels, fmt))
    typer.echo(f"appended {appended} label(s)")
    for version, values in sorted(live_metrics(cfg, window_hours).items()):
        shown = "  ".join(f"{k} {v:.4f}" for k, v in values.items() if k != "labelled")
        typer.echo(f"v{version}: {int(values['labelled'])} labelled record(s)  {shown}")


@app.command()
def operate(
    config: ConfigArg,
    overrides: SetOpt = None,
    cycles: Annotated[int | None, typer.Option(
        min=1, help="Stop after this many cycles (default: run until stopped).")] = None,
    abandon: Annotated[bool, typer.Option(
        "--abandon", help="End the unfinished cycle where it stands (nothing promoted; its "
        "challenger, if not promoted, withdrawn from @challenger), then exit.")] = False,
    restart_cycle: Annotated[bool, typer.Option(
        "--restart-cycle", help="Abandon the unfinished cycle, then run cycles as usual "
        "(the next one starts fresh).")] = False,
) -> None:
    """The retraining loop: each cycle ingests, monitors drift, decides, retrains, gates
    (validation rows and the labelled window), shadows, promotes and watches (rolling back
    on a breach). A stopped operator resumes its cycle when started again."""
    from rayops.operate import Operator
    from rayops.operate import operate as run_loop

    cfg = _load(config, overrides)
    if abandon or restart_cycle:
        Operator(cfg, say=typer.echo).abandon()
        if abandon:
            return
    _connect(cfg)
    with contextlib.suppress(KeyboardInterrupt):
        state = run_loop(cfg, cycles, say=typer.echo)
        typer.echo(f"stopped after cycle {state.cycle}: "
                   f"{state.facts.get('outcome', 'no retrain')}")
    _logs_line()


schema_app = typer.Typer(help="Schema contracts.", no_args_is_help=True)
app.add_typer(schema_app, name="schema")


@schema_app.command("infer")
def schema_infer(
    source: Annotated[str, typer.Argument(help="File, prefix or glob: s3://..., a path.")],
    fmt: Annotated[str, typer.Option("--format", help="csv, json (lines) or parquet.")] = "csv",
    label: Annotated[str | None, typer.Option(help="Column to predict (default: last).")] = None,
    name: Annotated[str, typer.Option(help="Pipeline name.")] = "my-pipeline",
    root: Annotated[str, typer.Option(help="storage.root of the proposed config.")] = "./lake",
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint.")] = None,
    sample_rows: Annotated[int, typer.Option(min=10, help="Rows to look at.")] = 10_000,
    output: Annotated[Path | None, typer.Option(help="Write the YAML here (default: stdout).")
                      ] = None,
) -> None:
    """Propose a pipeline config with a schema contract inferred from a sample."""
    import yaml

    from rayops.config import validate_config
    from rayops.data.infer import propose_config
    from rayops.data.sources import EXTENSIONS, FileSource
    from rayops.storage import resolve

    if fmt not in EXTENSIONS:
        raise typer.BadParameter(f"--format {fmt!r}: use one of {sorted(EXTENSIONS)}")
    proposal = propose_config(FileSource(resolve(source, endpoint_url), fmt), name, label, root,
                              sample_rows)
    proposal["storage"]["endpoint_url"] = endpoint_url
    validate_config(proposal)  # what we propose must load
    text = "# Proposed by `rayops schema infer`: review types, nullability and exclusions.\n"
    text += yaml.safe_dump(proposal, sort_keys=False)
    if output is None:
        typer.echo(text)
    else:
        output.write_text(text)
        typer.echo(f"wrote {output}")


def _wait_forever() -> None:
    typer.echo("Press Ctrl-C to stop.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        typer.echo("stopped")


def main() -> None:
    """Console entry point: library errors become one clear line and exit code 2."""
    with errors_in_one_line():
        app()
