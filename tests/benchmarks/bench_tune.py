"""Sweep overhead: wall time of a sweep against what a perfect scheduler would take: one
trial's run measured alone, times the trials, divided by the concurrency.

    .venv/bin/python tests/benchmarks/bench_tune.py [--trials 20] [--concurrency 2]

Each trial is a real rayops training run (one worker, MLflow run, logged model). ``ratio``
compares with a plain training run alone (``rayops train``'s path); ``ratio_vs_one_trial``
with one trial alone (a sweep of one, Tune's clock of the trial). The last line printed is
one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

from _setup import demo_config, start_bench

from rayops import tracking
from rayops.config import PipelineConfig
from rayops.data.ingest import file_source, ingest
from rayops.data.versions import DatasetVersion
from rayops.demo import churn
from rayops.train import run_training
from rayops.tune import _start, _tuner, search_space


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
    print(f"a plain training run alone: {alone:.1f}s", flush=True)
    # One trial alone: a sweep of one trial; Tune's own clock of the trial (its function,
    # from start to its last report: training, MLflow run and logged model).
    one_wall, one = _sweep(cfg.with_overrides({"tune.num_samples": 1}), version, 1)
    one_trial = one[0].metrics["time_total_s"]
    print(f"one trial alone: {one_trial:.1f}s (its sweep's wall {one_wall:.1f}s)", flush=True)
    wall, results = _sweep(cfg, version, args.trials)
    trials = sum(1 for r in results if r.metrics)
    ideal = alone * trials / args.concurrency
    seconds = sorted(r.metrics["time_total_s"] for r in results if r.metrics)
    print(
        f"{trials} trials, concurrency {args.concurrency}: wall {wall:.1f}s; a plain run "
        f"alone {alone:.1f}s x {trials} / {args.concurrency} = ideal {ideal:.1f}s; "
        f"trials took {seconds[0]:.1f}-{seconds[-1]:.1f}s each (median "
        f"{seconds[len(seconds) // 2]:.1f}s), against one trial alone {one_trial:.1f}s",
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
                "one_trial_alone_tune_s": round(one_trial, 2),
                "ratio_vs_one_trial": round(wall / (one_trial * trials / args.concurrency), 3),
                "trial_median_s": round(seconds[len(seconds) // 2], 2),
                "trials": trials,
                "concurrency": args.concurrency,
                "epochs": args.epochs,
            }
        )
    )


def _sweep(cfg: PipelineConfig, version: DatasetVersion, trials: int) -> tuple[float, Any]:
    """(wall seconds, Tune's results) of a sweep of ``trials`` trials."""
    record = _start(cfg, version, None)
    tuner = _tuner(cfg, version, record.run_id, record.name, None, search_space(cfg), trials)
    started = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - started
    tracking.end_run(cfg.tracking, record.run_id)
    return wall, results


def _timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
