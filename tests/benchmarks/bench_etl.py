"""ETL throughput: rayops ingest (Ray Data) against a single-process pyarrow baseline.

Both do the same work on the same raw CSV files (churn data with ~1% malformed values):
read, validate against the schema contract, split, write the curated and quarantine Parquet
files, gather the statistics the preprocessing is fitted from and commit one Delta table
version. The baseline calls the same per-file and per-block functions in one process, so the
ratio measures what Ray Data's parallelism gains and its overhead costs. Runs on the local
default and on a moto S3 endpoint.

The incremental case ingests ``--arrivals`` small files one at a time (as ``ingest --watch``
does) and reports the time of the last ingest over the first: the work of one ingest must
not grow with the dataset's history.

    .venv/bin/python tests/benchmarks/bench_etl.py [--rows 5000000] [--skip-s3] [--arrivals 50]

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

import psutil
from _setup import demo_config, start_bench

from rayops.config import PipelineConfig
from rayops.data import stats
from rayops.data import table as delta
from rayops.data.curate import (
    block_summary,
    merge_summaries,
    rows_schema,
    used_columns,
    validate_batch,
    write_block,
)
from rayops.data.ingest import file_source, ingest
from rayops.data.preprocess import fit
from rayops.data.sources import read_file
from rayops.data.validate import SPLIT
from rayops.demo import churn
from rayops.storage import Location, ensure_bucket, root_of


class PeakMemory:
    """Peak resident memory of this process and all its children (Ray's workers too)."""

    def __init__(self) -> None:
        self.peak_tree = self.peak_self = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                own = me.memory_info().rss
                tree = own + sum(c.memory_info().rss for c in me.children(recursive=True))
            except psutil.Error:
                continue
            self.peak_self, self.peak_tree = max(self.peak_self, own), max(self.peak_tree, tree)
            time.sleep(0.2)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def generate(target: Location, rows: int, files: int) -> int:
    per_file = rows // files
    for i in range(files):
        frame = churn.generate(per_file, seed=1000 + i)
        churn.write(frame, target.join(f"batch-{i:04d}"), files=1)
    return per_file * files


def baseline(cfg: PipelineConfig, out: Location) -> int:
    """The same read -> validate -> split -> write -> statistics, file by file, no Ray."""
    source = file_source(cfg)
    columns = list(used_columns(cfg.data))
    items = source.snapshot()
    summaries, written = [], []
    rows_table = out.join("rows")
    for item in items:
        table = validate_batch(read_file(source.location.fs, "csv", item, columns), cfg.data)
        written += write_block(table, rows_table, out.join("quarantine"))["rows"]
        summaries.append(block_summary(table, cfg.data))
    summary = merge_summaries(summaries, len(items))
    fit(stats.merge([summary.stats]), cfg.data)
    schema = rows_schema(cfg.data)
    table = delta.ensure_table(rows_table, schema, [SPLIT])
    delta.commit(
        rows_table,
        table,
        [delta.action_from_dict(a) for a in written],
        mode="append",
        schema=schema,
        partition_by=[SPLIT],
        metadata={},
        transaction=delta.Transaction("bench", 1),
    )
    return summary.read


def measure(name: str, fn: Any) -> dict[str, Any]:
    with PeakMemory() as memory:
        start = time.perf_counter()
        rows = fn()
        seconds = time.perf_counter() - start
    figures = {
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "peak_rss_mb": round(memory.peak_tree / 2**20),
        "peak_driver_rss_mb": round(memory.peak_self / 2**20),
    }
    print(
        f"{name:28s} {rows:>9,} rows in {seconds:7.1f}s = {figures['rows_per_s']:>9,} rows/s"
        f"  peak RSS {figures['peak_rss_mb']:,} MB (driver {figures['peak_driver_rss_mb']} MB)",
        flush=True,
    )
    return figures


def warm_up(cfg: PipelineConfig) -> None:
    """Pay the one-time costs outside the timed runs: the MLflow store's tables and Ray
    workers importing rayops. Both are per cluster, not per row."""
    small = cfg.with_overrides({"data.source": "warmup", "data.dataset": "warmup"})
    generate(file_source(small).location, 4000, 4)
    ingest(small)


def run_store(label: str, cfg: PipelineConfig, rows: int, files: int) -> dict[str, Any]:
    ensure_bucket(root_of(cfg.storage))
    warm_up(cfg)
    start = time.perf_counter()
    written = generate(file_source(cfg).location, rows, files)
    print(
        f"[{label}] generated {written:,} rows in {files} CSV files "
        f"({time.perf_counter() - start:.0f}s)",
        flush=True,
    )
    base = measure(
        f"[{label}] pyarrow baseline", lambda: baseline(cfg, root_of(cfg.storage).join("baseline"))
    )
    ray_figs = measure(f"[{label}] rayops ingest", lambda: ingest(cfg).manifest.rows.read)
    ratio = ray_figs["rows_per_s"] / base["rows_per_s"]
    print(f"[{label}] ratio rayops/baseline = {ratio:.2f}", flush=True)
    return {"baseline": base, "rayops": ray_figs, "ratio": round(ratio, 3)}


def incremental(cfg: PipelineConfig, arrivals: int, rows_per_file: int) -> dict[str, Any]:
    """``arrivals`` small files, each ingested on its own; seconds per ingest."""
    cfg = cfg.with_overrides({"data.source": "arrivals", "data.dataset": "arrivals"})
    location = file_source(cfg).location
    seconds = []
    for i in range(arrivals):
        churn.write(
            churn.generate(rows_per_file, seed=5000 + i), location.join(f"a{i:04d}"), files=1
        )
        start = time.perf_counter()
        version = ingest(cfg)
        seconds.append(time.perf_counter() - start)
        if i in (0, arrivals - 1) or (i + 1) % 10 == 0:
            print(
                f"  arrival {i + 1:3d}: {seconds[-1]:.2f}s (version {version.version})", flush=True
            )
    figures = {
        "arrivals": arrivals,
        "first_s": round(seconds[0], 3),
        "last_s": round(seconds[-1], 3),
        "median_first_10_s": round(sorted(seconds[:10])[5], 3),
        "median_last_10_s": round(sorted(seconds[-10:])[5], 3),
        "last_over_first": round(seconds[-1] / seconds[0], 3),
    }
    figures["median_last_over_first_10"] = round(
        figures["median_last_10_s"] / figures["median_first_10_s"], 3
    )
    print(
        f"incremental: {arrivals} arrivals of {rows_per_file} rows, first {seconds[0]:.2f}s, "
        f"last {seconds[-1]:.2f}s, ratio {figures['last_over_first']:.2f} (medians of 10: "
        f"{figures['median_last_over_first_10']:.2f})",
        flush=True,
    )
    return figures


def start_moto(port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import requests

    for _ in range(100):
        try:
            requests.get(f"http://127.0.0.1:{port}", timeout=1)
            return proc
        except requests.RequestException:
            time.sleep(0.2)
    raise RuntimeError("moto server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument(
        "--object-store-mb",
        type=int,
        default=256,
        help="Ray object store size; below the data size on purpose.",
    )
    parser.add_argument("--skip-s3", action="store_true")
    parser.add_argument("--arrivals", type=int, default=50)
    parser.add_argument("--arrival-rows", type=int, default=2000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    import ray

    work = start_bench("bench-etl", object_store_memory=args.object_store_mb * 2**20)
    quarantine = "data.max_quarantine_fraction=0.5"
    results = {"local": run_store("local", demo_config(work, quarantine), args.rows, args.files)}
    steps = incremental(demo_config(work, quarantine), args.arrivals, args.arrival_rows)
    if not args.skip_s3:
        port = 5599
        moto = start_moto(port)
        try:
            cfg = demo_config(
                work,
                quarantine,
                "storage.root=s3://bench/lake",
                f"storage.endpoint_url=http://127.0.0.1:{port}",
            )
            results["s3"] = run_store("s3", cfg, args.rows, args.files)
        finally:
            moto.terminate()
    local = results["local"]
    summary = {
        "rayops_rows_per_s": local["rayops"]["rows_per_s"],
        "baseline_rows_per_s": local["baseline"]["rows_per_s"],
        "ratio": local["ratio"],
        "peak_rss_mb": local["rayops"]["peak_rss_mb"],
        "object_store_mb": args.object_store_mb,
        "rows": args.rows,
        "cpus": os.cpu_count(),
        "incremental_last_over_first": steps["last_over_first"],
        "incremental_median_last_over_first_10": steps["median_last_over_first_10"],
        "incremental_first_s": steps["first_s"],
        "incremental_last_s": steps["last_s"],
        **(
            {
                "s3_rayops_rows_per_s": results["s3"]["rayops"]["rows_per_s"],
                "s3_baseline_rows_per_s": results["s3"]["baseline"]["rows_per_s"],
                "s3_ratio": results["s3"]["ratio"],
                "s3_peak_rss_mb": results["s3"]["rayops"]["peak_rss_mb"],
            }
            if "s3" in results
            else {}
        ),
    }
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
