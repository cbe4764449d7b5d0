"""Serving latency and throughput: rayops on Ray Serve against a bare FastAPI app.

The same model bundle is served (a) by a bare FastAPI app under uvicorn (one process) that
calls the model directly, with rayops' own routes and validation, and (b) by rayops on Ray
Serve (one replica per config), with batching off and on; the ratios compare the bare app
with one Serve config, the production default: batching on, every request in the
prediction log, 1% mirrored to a challenger. A Ray Serve echo deployment (no model) gives
Serve's floor: ``p50_over_echo_ms_c1`` is what rayops adds to it at concurrency 1, and
``logging_throughput_ratio_c64`` the throughput with the log and the mirror over none.
Every response must be 2xx, or the run fails. Serve's ingress is what rayops gives a
cluster it starts (HAProxy, see docs/serving.md); ``RAY_SERVE_ENABLE_HA_PROXY=0`` measures
Serve's proxy instead.

Side by side: every server runs at once and they are measured in turns, ``--rounds``
times, the order turning each round; each ratio is the median of its rounds' ratios. (A
first version measured them one after another, minutes apart: the same code gave the
bare app 764 to 1,635 req/s, and the ratios swung with it.) What running beside Serve
costs the bare app is printed too: its rate once Serve is shut down, and Serve's
processes' CPU at idle.
A bounded load generator on 127.0.0.1 sends requests of 2 records at concurrency 1, 16
and 64. A second, heavy model (two 4096-wide layers: each call reads ~130 MB of weights, so
the per-call cost dominates) measures what batching gains.

    .venv/bin/python tests/benchmarks/bench_serve.py          # ~3 minutes

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
from rayops.serve import USER_CODE_THREAD, wait_ready

LEVELS = {1: 60, 16: 320, 64: 1600}  # concurrency -> requests sent a round
LABELS = {
    "bare": "bare FastAPI (uvicorn)",
    "echo": "Ray Serve echo (no model)",
    "serve": "rayops Serve, batching off",
    "serve_no_log": "rayops Serve, batching on, no log",
    "serve_batched": "rayops Serve, log 100% + 1% mirror",
    "heavy_off": "heavy model, batching off",
    "heavy_on": "heavy model, batching on",
}

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


def side_by_side(
    urls: dict[str, str], levels: dict[int, int], rounds: int
) -> dict[str, dict[int, dict[str, Any]]]:
    """Every server at every concurrency in ``levels`` (-> requests a round), ``rounds``
    times, the order turning each round: a slower minute of this shared machine falls on
    all of them instead of on one. Percentiles pool every round's latencies; ``rps`` is the
    median round and ``rounds_rps`` each round's (ratios pair servers round by round)."""
    for url in urls.values():
        asyncio.run(_load(url, 4, 100))  # warm-up
    latencies: dict[tuple[str, int], list[float]] = {}
    rates: dict[tuple[str, int], list[float]] = {}
    names = list(urls)
    for turn in range(rounds):
        for name in names[turn % len(names) :] + names[: turn % len(names)]:
            for concurrency, total in levels.items():
                f = asyncio.run(_load(urls[name], concurrency, total))
                latencies.setdefault((name, concurrency), []).extend(f["latencies"])
                rates.setdefault((name, concurrency), []).append(f["rps"])
    figures: dict[str, dict[int, dict[str, Any]]] = {}
    for (name, concurrency), seconds in latencies.items():
        ms = np.array(seconds) * 1000
        figures.setdefault(name, {})[concurrency] = f = {
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "rps": round(float(np.median(rates[name, concurrency])), 1),
            "rounds_rps": rates[name, concurrency],
        }
        print(
            f"{LABELS[name]:34s} c={concurrency:<3d} p50 {f['p50_ms']:7.2f} ms  p99 "
            f"{f['p99_ms']:7.2f} ms  {f['rps']:8.1f} req/s (median of {rounds} rounds; "
            "all 2xx)",
            flush=True,
        )
    return figures


def paired(figures: dict[str, dict[int, dict[str, Any]]], a: str, b: str) -> list[float]:
    """``a``'s rate at c=64 over ``b``'s, round by round (measured seconds apart)."""
    return [
        round(x / y, 3)
        for x, y in zip(figures[a][64]["rounds_rps"], figures[b][64]["rounds_rps"], strict=True)
    ]


def serve_idle_cpu(seconds: float = 5.0) -> float:
    """Cores that Serve's own processes (controller, ingress, replicas, HAProxy) use while
    no request comes: a cost the bare app, sharing these cores, pays too."""
    import psutil

    def serve_processes() -> dict[int, psutil.Process]:
        found = {}
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if cmd.startswith(("ray::Serve", "ray::HAProxy", "ray::Proxy")) or "haproxy" in cmd:
                found[p.pid] = p
        return found

    def used(procs: dict[int, psutil.Process]) -> dict[int, float]:
        out = {}
        for pid, p in procs.items():
            try:
                t = p.cpu_times()
                out[pid] = t.user + t.system
            except psutil.Error:
                pass
        return out

    procs = serve_processes()
    before = used(procs)
    time.sleep(seconds)
    after = used(procs)
    return round(sum(after[p] - before[p] for p in after if p in before) / seconds, 3)


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

    # the replica runs its code as rayops' replicas do (serve.user_code_thread's default)
    options = {"num_cpus": 0.1, "runtime_env": {"env_vars": {USER_CODE_THREAD: "0"}}}

    @serve.deployment(max_ongoing_requests=128, ray_actor_options=options)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=6, help="turns of every server at every concurrency"
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

    def app(name: str) -> PipelineConfig:
        return cfg.with_overrides({"serve.app_name": name, "serve.route_prefix": f"/{name}"})

    bare = bare_fastapi(light, work, 8766)
    try:
        wait_ready("http://127.0.0.1:8766")
        # Every server runs from here on, each replica on a quarter of a logical CPU (a
        # reservation only: 7 replicas on 2 CPUs), and they are measured in turns.
        light_urls = {
            "bare": "http://127.0.0.1:8766",
            "echo": serve_floor(port),
            "serve": serve_model(app("off"), "bench-light", 1, cpus=0.25),
            "serve_no_log": serve_model(app("nolog"), "bench-light", 32, log=False, cpus=0.25),
            "serve_batched": serve_model(app("logged"), "bench-light", 32, mirror=0.01, cpus=0.25),
        }
        heavy_urls = {
            "heavy_off": serve_model(app("heavy-off"), "bench-heavy", 1, cpus=0.25),
            "heavy_on": serve_model(app("heavy-on"), "bench-heavy", 32, cpus=0.25),
        }
        idle_cores = serve_idle_cpu()
        print(f"Serve's processes at idle: {idle_cores:.3f} cores", flush=True)
        results = side_by_side(light_urls, LEVELS, args.rounds)
        heavy = side_by_side(heavy_urls, {64: 640}, args.rounds)
        serve_processes = _serve_processes()
        print(
            f"processes: bare FastAPI 1 (uvicorn); Ray Serve {serve_processes} actors "
            "(controller, ingress, a replica per config; with HAProxy as the ingress, "
            "HAProxy is one process more and the request path is HAProxy -> the replica). "
            "The load generator shares the same cores.",
            flush=True,
        )
        serve.shutdown()
        # the bare app once Serve is gone: what running beside Serve cost it
        alone = [asyncio.run(_load(light_urls["bare"], 64, 1600))["rps"] for _ in range(3)]
        print(f"bare FastAPI, Serve shut down: c=64 {np.median(alone):.1f} req/s", flush=True)
    finally:
        bare.terminate()
        bare.wait()
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)

    # One Serve config against the bare app: the production default (batching on, the
    # prediction log keeping every request, 1% mirrored to the challenger).
    served, bare_figures = results["serve_batched"], results["bare"]
    throughput = paired(results, "serve_batched", "bare")
    logging_cost = paired(results, "serve_batched", "serve_no_log")
    summary: dict[str, Any] = {
        "p50_overhead_ms_c1": round(served[1]["p50_ms"] - bare_figures[1]["p50_ms"], 2),
        "serve_floor_c1_p50_ms": results["echo"][1]["p50_ms"],
        "p50_over_echo_ms_c1": round(served[1]["p50_ms"] - results["echo"][1]["p50_ms"], 2),
        "logging_throughput_ratio_c64": float(np.median(logging_cost)),
        "logging_throughput_ratios_c64": logging_cost,
        "throughput_ratio_c64": float(np.median(throughput)),
        "throughput_ratios_c64": throughput,
        "batching_gain": float(np.median(paired(heavy, "heavy_on", "heavy_off"))),
        # the bare app after Serve shut down, and Serve's own idle load: what running side
        # by side costs the bare app
        "bare_c64_rps_without_serve": float(np.median(alone)),
        "serve_idle_cpu_cores": idle_cores,
        "processes_bare": 1,
        "processes_serve": serve_processes,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
    }
    for name, figures in [*results.items(), *heavy.items()]:
        for concurrency, f in figures.items():
            for key in ("p50_ms", "p99_ms", "rps"):
                summary[f"{name}_c{concurrency}_{key}"] = f[key]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
