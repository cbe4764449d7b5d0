"""Looking at data and traffic: ``predict``, ``quarantine``, ``monitor``, ``feedback`` and
``schema infer``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rayops.cli.common import BaseDirOpt, ConfigArg, SetOpt, VerboseOpt, app, load
from rayops.runtime import setup_logging

FormatOpt = Annotated[str, typer.Option("--format", help="csv, json (lines) or parquet.")]


@app.command()
def predict(
    file: Annotated[Path, typer.Argument(help="Records: .csv, .jsonl or a .json array.")],
    url: Annotated[str, typer.Option(help="Base URL of the API, e.g. http://127.0.0.1:8000")],
    output: Annotated[
        Path | None, typer.Option(help="Write JSON lines here (default: stdout).")
    ] = None,
    chunk: Annotated[int, typer.Option(min=1, help="Records per request.")] = 500,
    token_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the bearer token.")
    ] = None,
) -> None:
    """Send a file of records to a running deployment and print or write the predictions."""
    import functools
    import sys

    from rayops.errors import ServeError
    from rayops.serve.client import predict_file

    done, sink = 0, sys.stdout if output is None else None
    try:
        notes = functools.partial(typer.echo, err=True)  # columns not sent, on stderr
        for lines, done, total in predict_file(file, url, chunk, token_env, note=notes):
            sink = sink or output.open("w")  # type: ignore[union-attr]  # the first answer
            sink.write("".join(f"{line}\n" for line in lines))
            sink.flush()  # written as it goes: a later chunk that fails keeps these
            if total > chunk:
                typer.echo(f"predicted {done:,} of {total:,} records", err=True)
    except ServeError as exc:
        if done and output is not None:
            raise ServeError(f"{exc} (the first {done:,} predictions are in {output})") from None
        raise
    finally:
        if output is not None and sink is not None:
            sink.close()
    if output is not None:
        typer.echo(f"wrote {done:,} predictions to {output}")


@app.command()
def quarantine(
    config: ConfigArg,
    overrides: SetOpt = None,
    version: Annotated[
        int | None,
        typer.Option(
            "--dataset-version",
            "--version",
            min=1,
            help="Curated dataset version (default: latest); --version is its old name.",
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Rows to show.")] = 20,
    base_dir: BaseDirOpt = None,
) -> None:
    """Show rows a dataset version rejected: source file, line, reason, original values."""
    from rayops.data.versions import load_version

    setup_logging(verbose=False)
    chosen = load_version(load(config, overrides, base_dir), version)
    rows = chosen.quarantine(limit)
    typer.echo(
        f"{chosen.id}: {chosen.manifest.rows.quarantine} quarantined row(s), "
        f"{len(chosen.manifest.unreadable)} unreadable file(s) "
        f"(table {chosen.root.join('quarantine').uri})"
    )
    for row in rows.to_pylist():
        typer.echo(
            f"{row['source_file']}:{row['line'] or '-'}  {row['reason']}  {row['raw'] or ''}"
        )


@app.command()
def monitor(
    config: ConfigArg,
    records: Annotated[
        Path | None,
        typer.Option(
            help="Records to judge: a CSV, JSON Lines or Parquet file of feature columns (and "
            "optionally a 'prediction' column). Default: the prediction log's last window."
        ),
    ] = None,
    window_hours: Annotated[
        float, typer.Option(min=0.01, help="The prediction log's window, in hours.")
    ] = 24.0,
    fmt: FormatOpt = "csv",
    overrides: SetOpt = None,
    alias: Annotated[
        str, typer.Option(help="The model whose training data is the reference.")
    ] = "champion",
    output: Annotated[
        Path | None, typer.Option(help="Also write drift_report.json and .html here.")
    ] = None,
    fail_on_drift: Annotated[
        bool, typer.Option(help="Exit with status 3 when the window has drifted (for schedulers).")
    ] = False,
    base_dir: BaseDirOpt = None,
    verbose: VerboseOpt = False,
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

    setup_logging(verbose)
    cfg = load(config, overrides, base_dir)
    window = read_window(cfg, window_hours) if records is None else read_records(records, fmt)
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
    labels: Annotated[
        Path,
        typer.Argument(
            help="True labels: a CSV, JSON Lines or Parquet "
            "file with request_id, label and optionally "
            "record_index."
        ),
    ],
    fmt: FormatOpt = "csv",
    overrides: SetOpt = None,
    window_hours: Annotated[
        float | None,
        typer.Option(
            help="Live metrics over the records served in this many hours (default: all)."
        ),
    ] = None,
    base_dir: BaseDirOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Append true labels for served records, then show each model version's live
    metrics (the labels joined with the prediction log)."""
    from rayops.monitor.feedback import append_feedback, live_metrics
    from rayops.monitor.report import read_records

    setup_logging(verbose)
    cfg = load(config, overrides, base_dir)
    appended = append_feedback(cfg, read_records(labels, fmt))
    typer.echo(f"appended {appended} label(s)")
    for version, values in sorted(live_metrics(cfg, window_hours).items()):
        shown = "  ".join(f"{k} {v:.4f}" for k, v in values.items() if k != "labelled")
        typer.echo(f"v{version}: {int(values['labelled'])} labelled record(s)  {shown}")


schema_app = typer.Typer(help="Schema contracts.", no_args_is_help=True)
app.add_typer(schema_app, name="schema")


@schema_app.command("infer")
def schema_infer(
    source: Annotated[str, typer.Argument(help="File, prefix or glob: s3://..., a path.")],
    fmt: FormatOpt = "csv",
    label: Annotated[str | None, typer.Option(help="Column to predict (default: last).")] = None,
    name: Annotated[str, typer.Option(help="Pipeline name.")] = "my-pipeline",
    root: Annotated[str, typer.Option(help="storage.root of the proposed config.")] = "./lake",
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint.")] = None,
    sample_rows: Annotated[int, typer.Option(min=10, help="Rows to look at.")] = 10_000,
    output: Annotated[
        Path | None, typer.Option(help="Write the YAML here (default: stdout).")
    ] = None,
) -> None:
    """Propose a pipeline config with a schema contract inferred from a sample."""
    import yaml

    from rayops.config import validate_config
    from rayops.data.infer import propose_config, proposed_checks, sample
    from rayops.data.sources import EXTENSIONS, FileSource
    from rayops.storage import resolve

    if fmt not in EXTENSIONS:
        raise typer.BadParameter(f"--format {fmt!r}: use one of {sorted(EXTENSIONS)}")
    files = FileSource(resolve(source, endpoint_url), fmt)
    rows = sample(files, sample_rows)
    proposal = propose_config(files, name, label, root, sample_rows, rows)
    proposal["storage"]["endpoint_url"] = endpoint_url
    validate_config(proposal)  # what we propose must load
    text = "# Proposed by `rayops schema infer`: review types, nullability and exclusions.\n"
    text += yaml.safe_dump(proposal, sort_keys=False)
    text += proposed_checks(proposal, rows)
    if output is None:
        typer.echo(text)
    else:
        output.write_text(text)
        typer.echo(f"wrote {output}")
