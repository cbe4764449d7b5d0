"""Sweep overhead: wall time of a sweep against what a perfect scheduler would take: one
trial's run measured alone, times the trials, divided by the concurrency.

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
from collections.abc import Callable

from _setup import demo_config, start_bench

from rayops import tracking
from rayops.data.ingest import file_source, ingest
from rayops.demo import churn
from rayops.train import run_training
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
        work,
        f"train.epochs={args.epochs}",
        "train.num_workers=1",
        f"train.cpus_per_worker={cpus / args.concurrency}",
        "train.checkpoints_to_keep=1",
        "tune.enabled=true",
        f"tune.num_samples={args.trials}",
        f"tune.max_concurrent_trials={args.concurrency}",
        "tune.scheduler.type=fifo",
    )
    churn.write(churn.generate(5000, seed=5), file_source(cfg).location, files=2)
    version = ingest(cfg)
    # The baseline: one trial's work as a plain training run, alone on the cluster (the
    # same TorchTrainer, MLflow run and logged model a trial has).
    alone = _timed(lambda: run_training(cfg, version))
    record = _start(cfg, version)
    tuner = _tuner(cfg, version, record.run_id, record.name, None)
    started = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - started
    tracking.end_run(cfg.tracking, record.run_id)
    trials = sum(1 for r in results if r.metrics)
    ideal = alone * trials / args.concurrency
    print(
        f"{trials} trials, concurrency {args.concurrency}: wall {wall:.1f}s; one trial "
        f"alone {alone:.1f}s x {trials} / {args.concurrency} = ideal {ideal:.1f}s",
        flush=True,
    )
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    print(
        json.dumps(
            {
                "wall_s": round(wall, 2),
                "ideal_s": round(ideal, 2),
                "one_trial_alone_s": round(alone, 2),
                "ratio": round(wall / ideal, 3),
                "trials": trials,
                "concurrency": args.concurrency,
                "epochs": args.epochs,
            }
        )
    )


def _timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
