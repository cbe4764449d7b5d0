"""Running on a cluster: ``submit`` (a stage as a Ray job), ``k8s`` (KubeRay manifests) and
``simulated-cluster`` (cluster.yaml's shape on this machine)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from rayops.cli.common import (
    ConfigArg,
    DatasetVersionOpt,
    ResumeOpt,
    SetOpt,
    app,
    load,
)
from rayops.cli.stages import SUBMITTED_AS_ENV
from rayops.launch.jobs import DEFAULT_ADDRESS, DRIVER_CPUS, STAGES
from rayops.runtime import setup_logging


@app.command()
def submit(
    stage: Annotated[
        str, typer.Argument(help=f"{', '.join(STAGES)} (pipeline: every stage, then serve).")
    ],
    config: ConfigArg,
    overrides: SetOpt = None,
    address: Annotated[
        str,
        typer.Option(
            envvar="RAY_API_SERVER_ADDRESS", help="The cluster's dashboard (Ray job API)."
        ),
    ] = DEFAULT_ADDRESS,
    wait: Annotated[
        bool, typer.Option(help="Follow the job's log until it ends (exit status: the job's).")
    ] = True,
    resume: ResumeOpt = False,
    dataset_version: DatasetVersionOpt = None,
    driver_cpus: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="CPUs the job's driver reserves (its own work: planning, evaluation, logging).",
        ),
    ] = DRIVER_CPUS,
) -> None:
    """Submit a stage as a Ray job: only the config travels, relative paths mean this
    folder (a cluster on this machine) or are refused (another address)."""
    from rayops.launch import jobs

    setup_logging(verbose=False)
    argv = ["rayops", "submit", stage, str(config), *(f"--set={o}" for o in overrides or [])]
    submission = jobs.submit(
        stage,
        config,
        overrides,
        address,
        resume=resume,
        dataset_version=dataset_version,
        driver_cpus=driver_cpus,
        env={SUBMITTED_AS_ENV: shlex.join(argv)},
    )
    typer.echo(
        f"submitted {submission.submission_id} to {address}: {stage} of "
        f"{submission.metadata['rayops.pipeline']} ({config})"
    )
    typer.echo(f"follow: ray job logs -f --address {address} {submission.submission_id}")
    typer.echo(f"stop:   ray job stop --address {address} {submission.submission_id}")
    if not wait:
        return
    status = jobs.follow(submission)
    typer.echo(f"job {submission.submission_id}: {status}")
    if status != "SUCCEEDED":
        raise SystemExit(1)


@app.command()
def k8s(
    config: ConfigArg,
    image: Annotated[
        str,
        typer.Option(
            help="rayops' image without the -cpu/-gpu suffix, e.g. registry/rayops:0.1.0."
        ),
    ],
    cluster: Annotated[
        Path, typer.Option(help="cluster.yaml whose node types become the worker groups.")
    ] = Path("cluster.yaml"),
    redis: Annotated[
        str, typer.Option(help="Redis for the RayService's GCS fault tolerance (host:port).")
    ] = "redis:6379",
    output: Annotated[Path, typer.Option(help="Folder for the manifests.")] = Path("k8s"),
    overrides: SetOpt = None,
) -> None:
    """Write KubeRay manifests: ConfigMap, RayCluster, RayJob (ingest and train) and
    RayService (serving, GCS fault tolerance with Redis), token authentication on."""
    import yaml

    from rayops.launch.kuberay import manifests

    cfg = load(config, overrides)
    output.mkdir(parents=True, exist_ok=True)
    for manifest in manifests(cfg, image, cluster, redis_address=redis):
        target = output / f"{manifest['kind'].lower()}.yaml"
        target.write_text(yaml.safe_dump(manifest, sort_keys=False))
        typer.echo(f"wrote {target}")
    typer.echo(
        f"kubectl apply -f {output}/configmap.yaml -f {output}/raycluster.yaml "
        f"(or rayjob.yaml, rayservice.yaml)"
    )


@app.command("simulated-cluster")
def simulated_cluster(
    cluster: Annotated[
        Path, typer.Option(help="cluster.yaml whose node types the simulation takes.")
    ] = Path("cluster.yaml"),
    port: Annotated[int, typer.Option(help="The head's GCS port (Redis may hold 6379).")] = 6380,
    idle_timeout_minutes: Annotated[
        float | None,
        typer.Option(help="Idle workers are removed after this (default: cluster.yaml's)."),
    ] = None,
    output: Annotated[Path, typer.Option(help="Autoscaling config to write.")] = Path(
        "simulated-cluster.yaml"
    ),
) -> None:
    """Write an autoscaling config with cluster.yaml's node types for Ray's fake
    multi-node provider and print the `ray start` that runs it on this machine: the real
    autoscaler launching and removing local nodes, token authentication on."""
    import yaml

    from rayops.launch.cluster import (
        SIMULATED_ENV,
        read_shape,
        shell_line,
        simulated_config,
        simulated_start_command,
    )

    shape = read_shape(cluster)
    output.write_text(
        yaml.safe_dump(simulated_config(shape, port, idle_timeout_minutes), sort_keys=False)
    )
    typer.echo(
        f"wrote {output}: head {shape.head.resources}, "
        + ", ".join(
            f"{t.name} {t.resources} x{t.min_workers}-{t.max_workers}" for t in shape.workers
        )
    )
    typer.echo("ray get-auth-token --generate   # once: ~/.ray/auth_token")
    typer.echo(shell_line(simulated_start_command(shape, output, port), SIMULATED_ENV))
    typer.echo("ray stop   # ends it, simulated nodes included")
