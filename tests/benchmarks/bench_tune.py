"""Sweep overhead: wall time of a sweep against the sum of its trials' own run times
divided by the concurrency (what a perfect scheduler would take).

    .venv/bin/python tests/benchmarks/bench_tune.py [--trials 20] [--concurrency 2]

Each trial is a real rayops training run (a 1-worker TorchTrainer, MLflow run, logged
model). The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time

from _setup import demo_config, start_bench

from rayops import tracking
from rayops.data.ingest import file_source, ingest
from rayops.demo import churn
from rayops.tune import _start, _tuner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import ray

    work = start_bench("bench-tune")
    cpus = os.cpu_count() or 2
    cfg = demo_config(
        work, f"train.epochs={args.epochs}", "train.num_workers=1",
        f"train.cpus_per_worker={cpus / args.concurrency}", "train.checkpoints_to_keep=1",
        "tune.enabled=true", f"tune.num_samples={args.trials}",
        f"tune.max_concurrent_trials={args.concurrency}", "tune.scheduler.type=fifo")
    churn.write(churn.generate(5000, seed=5), file_source(cfg).location, files=2)
    version = ingest(cfg)
    record = _start(cfg, version)
    tuner = _tuner(cfg, version, record["run_id"], record["name"])
    started = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - started
    tracking.end_run(cfg.tracking, record["run_id"])
    trial_times = [r.metrics["time_total_s"] for r in results if r.metrics]
    ideal = sum(trial_times) / args.concurrency
    mean = sum(trial_times) / max(len(trial_times), 1)
    print(f"{len(trial_times)} trials, concurrency {args.concurrency}: wall {wall:.1f}s, "
          f"sum of trial times / concurrency {ideal:.1f}s, mean trial {mean:.1f}s", flush=True)
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"wall_s": round(wall, 2), "ideal_s": round(ideal, 2),
                      "ratio": round(wall / ideal, 3), "trials": len(trial_times),
                      "concurrency": args.concurrency, "epochs": args.epochs}))


if __name__ == "__main__":
    main()
