"""Serving latency and throughput: rayops on Ray Serve against a bare FastAPI app.

The same model bundle is served (a) by a bare FastAPI app under uvicorn (one process) that
calls the model directly, with rayops' own routes and validation, and (b) by rayops on Ray
Serve (one replica), with batching off and on; the ratios compare the bare app with one
Serve config, the production default: batching on, every request in the prediction log,
1% mirrored to a challenger. A Ray Serve echo deployment (no model) gives Serve's floor:
``p50_over_echo_ms_c1`` is what rayops adds to it at concurrency 1, and
``logging_throughput_ratio_c64`` the throughput with the log and the mirror over none.
Every response must be 2xx, or the run fails. Serve's ingress is what rayops gives a
cluster it starts (HAProxy, see docs/serving.md); ``RAY_SERVE_ENABLE_HA_PROXY=0`` measures
Serve's proxy instead.
A bounded load generator on 127.0.0.1 sends requests of 2 records at concurrency 1, 16
and 64. A second, heavy model (two 4096-wide layers: each call reads ~130 MB of weights, so
the per-call cost dominates) measures what batching gains.

    .venv/bin/python tests/benchmarks/bench_serve.py

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pandas as pd
from _setup import demo_config, start_bench

from rayops import tracking
from rayops.config import PipelineConfig
from rayops.data.ingest import file_source, ingest
from rayops.data.versions import DatasetVersion
from rayops.demo import churn
from rayops.demo.run import SAMPLE_RECORDS
from rayops.models import MLP, Bundle, MLPModel
from rayops.serve import wait_ready

LEVELS = {1: 300, 16: 1600, 64: 3200}  # concurrency -> requests sent

BARE_APP = """
import sys
from rayops.predict import Predictor
from rayops.serve.app import create_app
from rayops.serve.bodies import record_model

predictor = Predictor.load(__import__("pathlib").Path(sys.argv[1]))
INFO = {"name": "bench", "version": "1", "alias": "champion", "run_id": "-"}

class Direct:
    record_model = record_model(predictor.schema, predictor.preprocessor.label)
    forecast_body, task = None, predictor.task
    max_records, max_body_bytes, token, in_flight = 1000, 1 << 20, None, 0
    async def predict(self, records, request_id=None, key=None):
        return {"model": INFO, "predictions": predictor.predict_valid(records)}
    async def feedback(self, labels): return None
    def metadata(self): return {}
    def health(self): return {"status": "ok"}
    def observe(self, route, status, seconds): pass

app = create_app(Direct())
"""


def make_bundle(version: DatasetVersion, hidden: list[int], folder: Path) -> Path:
    pre = version.preprocessor
    arch = {
        "n_inputs": pre.n_features,
        "n_outputs": pre.n_outputs,
        "hidden_sizes": hidden,
        "dropout": 0.0,
        "activation": "relu",
    }
    meta = {
        "architecture": arch,
        "preprocessor": version.manifest.preprocessor,
        "schema": version.manifest.columns,
        "metrics": {},
        "dataset": version.id,
    }
    return Bundle(MLPModel(MLP(pre.n_features, pre.n_outputs, hidden)), meta).save(folder)


def register(cfg: PipelineConfig, bundle: Path, name: str, alias: str = "champion") -> None:
    """Log and register the bundle as ``name@alias`` in the benchmark's MLflow store."""
    run_id = tracking.start_run(cfg.tracking, cfg.experiment_name, name)
    example = pd.DataFrame(SAMPLE_RECORDS[:1])
    required = {
        n: not s["nullable"]
        for n, s in json.loads((bundle / "bundle.json").read_text())["schema"].items()
        if n != cfg.data.label
    }
    uri = tracking.log_model(cfg.tracking, run_id, bundle, example, required)
    tracking.end_run(cfg.tracking, run_id)
    registered = tracking.register(cfg.tracking, name, uri, run_id)
    if alias == "champion":
        tracking.promote(cfg.tracking, name, registered.version)
    else:  # a challenger as the gate leaves one: passed, then aliased (replicas check both)
        tracking.tag_version(cfg.tracking, name, registered.version, {tracking.PASSED_TAG: "true"})
        tracking.set_alias(cfg.tracking, name, alias, registered.version)


async def _load(url: str, concurrency: int, total: int) -> dict[str, Any]:
    """``total`` requests from ``concurrency`` clients; latency percentiles and rate (and
    the latencies, in seconds)."""
    body = {"records": SAMPLE_RECORDS}
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    sent = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            nonlocal sent
            while sent < total:
                sent += 1
                started = time.perf_counter()
                async with session.post(f"{url}/predict", json=body) as response:
                    await response.read()
                    statuses[response.status] = statuses.get(response.status, 0) + 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    refused = {code: n for code, n in statuses.items() if not 200 <= code < 300}
    if refused:  # a figure measured on refusals would flatter the server
        raise SystemExit(f"{url}: non-2xx responses {refused} of {len(latencies)}")
    ms = np.array(latencies) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "rps": round(len(latencies) / wall, 1),
        "latencies": latencies,
    }


def measure(
    label: str, url: str, levels: tuple[int, ...] = tuple(LEVELS)
) -> dict[int, dict[str, float]]:
    asyncio.run(_load(url, 4, 100))  # warm-up
    figures = {}
    for concurrency in levels:
        total = LEVELS[concurrency]
        figures[concurrency] = f = asyncio.run(_load(url, concurrency, total))
        del f["latencies"]
        print(
            f"{label:34s} c={concurrency:<3d} p50 {f['p50_ms']:7.2f} ms  p99 "
            f"{f['p99_ms']:7.2f} ms  {f['rps']:8.1f} req/s  (all 2xx)",
            flush=True,
        )
    return figures


def bare_fastapi(bundle: Path, work: Path, port: int) -> subprocess.Popen:
    (work / "bare_app.py").write_text(BARE_APP.replace("sys.argv[1]", repr(str(bundle))))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bare_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(work)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc


def serve_floor(port: int) -> str:
    """Ray Serve's own request path with no work in it: a FastAPI echo deployment on one
    replica. What it costs over bare uvicorn is Serve's floor, which no model code can beat."""
    from fastapi import FastAPI
    from ray import serve

    echo = FastAPI()

    @serve.deployment(max_ongoing_requests=128, ray_actor_options={"num_cpus": 0.1})
    @serve.ingress(echo)
    class Echo:
        @echo.post("/predict")
        async def predict(self, body: dict) -> dict:
            return body

        @echo.get("/health")
        async def health(self) -> dict:
            return {"status": "ok"}

    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Echo.bind(), name="echo", route_prefix="/echo")
    url = f"http://127.0.0.1:{port}/echo"
    wait_ready(url)
    return url


def serve_model(
    cfg: PipelineConfig,
    model: str,
    batch: int,
    log: bool = True,
    mirror: float = 0.0,
    cpus: float = 1.0,
) -> str:
    """One replica of ``model``; ``log``: the prediction log keeps every request, ``mirror``:
    the share mirrored to the challenger."""
    from rayops.serve import deploy

    url = deploy(
        cfg.with_overrides(
            {
                "serve.log_predictions": log,
                "serve.log_sample_rate": 1.0,
                "serve.mirror_fraction": mirror,
                "tracking.registered_model": model,
                "serve.max_batch_size": batch,
                "serve.batch_wait_timeout_s": 0.005 if batch > 1 else 0.0,
                "serve.max_ongoing_requests": 128,
                "serve.max_queued_requests": -1,
                "serve.autoscaling.min_replicas": 1,
                "serve.autoscaling.max_replicas": 1,
                "serve.cpus_per_replica": cpus,
                "serve.model_poll_interval_s": 0,
            }
        )
    )
    wait_ready(url)
    _only_the_new_replica(cfg)
    return url


def _only_the_new_replica(cfg: PipelineConfig, timeout_s: float = 120.0) -> None:
    """Wait until the previous config's replica has stopped: one still draining its queue
    on the same cores would be measured as this one's cost."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        app = serve.status().applications.get(cfg.serve.app_name)
        states = [dict(d.replica_states) for d in app.deployments.values()] if app else []
        if states and all(s == {"RUNNING": 1} for s in states):
            time.sleep(2)  # its processes settle
            return
        time.sleep(0.5)
    raise SystemExit(f"the previous replica did not stop within {timeout_s:.0f} s")


def _serve_processes() -> int:
    """Live Serve actors (controller, proxy or HAProxy's manager and the fallback proxy,
    replicas): each is its own process."""
    import ray

    return sum(
        1
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(("SERVE_CONTROLLER", "SERVE_PROXY", "SERVE_REPLICA"))
    )


def goals(cfg: PipelineConfig, port: int, rounds: int = 10) -> None:
    """The two goal figures alone. The echo and rayops with and without the log run side
    by side and are measured in turns (``rounds`` times each), so a slower minute of this
    shared machine falls on all of them instead of on one."""

    def app(name: str) -> PipelineConfig:
        return cfg.with_overrides({"serve.app_name": name, "serve.route_prefix": f"/{name}"})

    urls = {
        "echo": serve_floor(port),
        "plain": serve_model(app("plain"), "bench-light", 32, log=False, cpus=0.5),
        "logged": serve_model(app("logged"), "bench-light", 32, mirror=0.01, cpus=0.5),
    }
    for url in urls.values():
        asyncio.run(_load(url, 4, 100))  # warm-up
    c1: dict[str, list[float]] = {name: [] for name in urls}
    rps: dict[str, list[float]] = {"plain": [], "logged": []}
    for _ in range(rounds):
        for name, url in urls.items():
            c1[name] += asyncio.run(_load(url, 1, 60))["latencies"]
        for name in rps:
            rps[name].append(asyncio.run(_load(urls[name], 64, 640))["rps"])
    p50 = {name: float(np.percentile(np.array(v) * 1000, 50)) for name, v in c1.items()}
    for name in urls:
        print(
            f"{name:8s} c=1 p50 {p50[name]:6.2f} ms over {len(c1[name])} requests"
            + (
                f"; c=64 {np.median(rps[name]):6.1f} req/s (median of {rounds} rounds)"
                if name in rps
                else ""
            ),
            flush=True,
        )
    print(
        json.dumps(
            {
                "p50_over_echo_ms_c1": round(p50["logged"] - p50["echo"], 2),
                "p50_no_log_over_echo_ms_c1": round(p50["plain"] - p50["echo"], 2),
                # each round's logged rate over the plain rate measured just before it
                "logging_throughput_ratio_c64": round(
                    float(np.median(np.array(rps["logged"]) / np.array(rps["plain"]))), 3
                ),
                "logging_throughput_ratios_c64": [
                    round(a / b, 3) for a, b in zip(rps["logged"], rps["plain"], strict=True)
                ],
                "rounds": rounds,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--goals",
        action="store_true",
        help="only the issue's two goal "
        "figures (the echo, rayops with and without the log): ~3 minutes",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import ray
    from ray import serve

    # Replicas' output (Serve's access log: a line per request) stays in Ray's session logs,
    # as in production: streamed to this process, which also generates the load, every
    # line cost the load generator CPU that the bare app's run did not pay.
    work = start_bench("bench-serve", log_to_driver=False)
    port = 8765
    cfg = demo_config(work, f"serve.port={port}")
    churn.write(churn.generate(5000, seed=4), file_source(cfg).location, files=1)
    version = ingest(cfg)
    light = make_bundle(version, [64, 32], work / "light")
    heavy = make_bundle(version, [4096, 4096], work / "heavy")
    register(cfg, light, "bench-light")
    # a second version beside it, for the mirror (the same size: a retrained model)
    register(cfg, make_bundle(version, [64, 32], work / "light-2"), "bench-light", "challenger")
    register(cfg, heavy, "bench-heavy")

    results: dict[str, Any] = {}
    if args.goals:
        goals(cfg, port)
        return
    bare = bare_fastapi(light, work, 8766)
    try:
        wait_ready("http://127.0.0.1:8766")
        results["bare"] = measure("bare FastAPI (uvicorn)", "http://127.0.0.1:8766")
    finally:
        bare.terminate()
        bare.wait()
    floor = measure("Ray Serve echo (no model)", serve_floor(port), levels=(1,))
    serve.delete("echo")
    results["serve"] = measure("rayops Serve, batching off", serve_model(cfg, "bench-light", 1))
    results["serve_no_log"] = measure(
        "rayops Serve, batching on, no log",
        serve_model(cfg, "bench-light", 32, log=False),
        levels=(1, 64),
    )
    results["serve_batched"] = measure(
        "rayops Serve, log 100% + 1% mirror", serve_model(cfg, "bench-light", 32, mirror=0.01)
    )
    heavy_off = measure("heavy model, batching off", serve_model(cfg, "bench-heavy", 1))
    heavy_on = measure("heavy model, batching on", serve_model(cfg, "bench-heavy", 32))
    serve_processes = _serve_processes()
    print(
        f"processes: bare FastAPI 1 (uvicorn); Ray Serve {serve_processes} actors "
        "(controller, ingress, one replica; with HAProxy as the ingress, HAProxy is one "
        "process more and the request path is HAProxy -> the replica). The load generator "
        "shares the same cores.",
        flush=True,
    )
    serve.shutdown()
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)

    # One Serve config against one bare config: the production default (batching on).
    served = results["serve_batched"]
    summary: dict[str, Any] = {
        "p50_overhead_ms_c1": round(served[1]["p50_ms"] - results["bare"][1]["p50_ms"], 2),
        "serve_floor_c1_p50_ms": floor[1]["p50_ms"],
        # the goal: rayops within 1.5 ms of Serve's own floor, logging on, 1% mirrored
        "p50_over_echo_ms_c1": round(served[1]["p50_ms"] - floor[1]["p50_ms"], 2),
        "logging_throughput_ratio_c64": round(
            served[64]["rps"] / results["serve_no_log"][64]["rps"], 3
        ),
        "throughput_ratio_c64": round(served[64]["rps"] / results["bare"][64]["rps"], 3),
        "processes_bare": 1,
        "processes_serve": serve_processes,
        "batching_gain": round(heavy_on[64]["rps"] / heavy_off[64]["rps"], 2),
        "cpus": os.cpu_count(),
    }
    for name, figures in [*results.items(), ("heavy_off", heavy_off), ("heavy_on", heavy_on)]:
        for concurrency, f in figures.items():
            for key in ("p50_ms", "p99_ms", "rps"):
                summary[f"{name}_c{concurrency}_{key}"] = f[key]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
