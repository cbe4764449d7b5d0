"""Training throughput: rayops (Ray Train, DDP) against a plain single-process PyTorch loop.

Same curated data (synthetic churn), same model, optimizer, batch size, epochs and threads
per process. Samples/s count the training epochs only (validation excluded on both sides);
rayops' first epoch includes streaming the shard through Ray Data. Also measures the
scaling from 1 to 2 workers.

    .venv/bin/python tests/benchmarks/bench_train.py [--rows 200000] [--epochs 8]

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time

import torch
from _setup import demo_config, start_bench
from mlflow import MlflowClient

from rayops.config import PipelineConfig
from rayops.data.ingest import file_source, ingest
from rayops.data.versions import DatasetVersion
from rayops.demo import churn
from rayops.models import build_model
from rayops.train import architecture, run_training
from rayops.train.driver import model_inputs


def plain_pytorch(cfg: PipelineConfig, version: DatasetVersion) -> float:
    """A hand-written loop over in-memory tensors; returns training samples/s."""
    torch.set_num_threads(int(cfg.train.cpus_per_worker))
    torch.manual_seed(cfg.train.seed)
    inputs = model_inputs(version.table("train"), version.manifest["preprocessor"])
    x, y = torch.from_numpy(inputs["features"]), torch.from_numpy(inputs["label"])
    model = build_model(architecture(cfg, version))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss()
    batch = cfg.train.batch_size
    seconds = 0.0
    for epoch in range(cfg.train.epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for start in range(0, len(x), batch):
            index = order[start:start + batch]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[index]), y[index])
            loss.backward()
            optimizer.step()
        seconds += time.perf_counter() - started
    return len(x) * cfg.train.epochs / seconds


def rayops_training(cfg: PipelineConfig, version: DatasetVersion
                    ) -> tuple[float, float, float]:
    """(samples/s over all epochs, samples/s from the second epoch on, run wall seconds)."""
    started = time.perf_counter()
    outcome = run_training(cfg, version)
    wall = time.perf_counter() - started
    client = MlflowClient(cfg.tracking.uri)
    times = [m.value for m in client.get_metric_history(outcome.run_id, "epoch_time_s")]
    rates = [m.value for m in client.get_metric_history(outcome.run_id, "samples_per_s")]
    samples = [t * r for t, r in zip(times, rates, strict=True)]
    return sum(samples) / sum(times), sum(samples[1:]) / sum(times[1:]), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import ray

    work = start_bench("bench-train")
    cfg = demo_config(
        work, f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}",
        "train.num_workers=1", "train.cpus_per_worker=1", "train.data_loading=memory",
        "train.lr_scaling=none", "train.lr_schedule=constant", "train.checkpoints_to_keep=1")
    churn.write(churn.generate(args.rows, seed=3), file_source(cfg).location, files=4)
    version = ingest(cfg)
    rows = version.manifest["rows"]["train"]
    print(f"{rows:,} training rows, {args.epochs} epochs, batch {args.batch_size}, "
          f"1 thread per process", flush=True)

    baseline = plain_pytorch(cfg, version)
    print(f"plain PyTorch loop        {baseline:>10,.0f} samples/s", flush=True)
    one, one_steady, wall_one = rayops_training(cfg, version)
    print(f"rayops, 1 worker          {one:>10,.0f} samples/s  ({one_steady:,.0f} from epoch 2;"
          f" run wall {wall_one:.1f}s)", flush=True)
    two, two_steady, wall_two = rayops_training(cfg.with_overrides({"train.num_workers": 2}),
                                                version)
    print(f"rayops, 2 workers (DDP)   {two:>10,.0f} samples/s  ({two_steady:,.0f} from epoch 2;"
          f" run wall {wall_two:.1f}s)", flush=True)
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    summary = {"rayops_samples_per_s": round(one), "baseline_samples_per_s": round(baseline),
               "ratio": round(one / baseline, 3), "scaling_2_workers": round(two / one, 3),
               "ratio_from_epoch_2": round(one_steady / baseline, 3),
               "rayops_2_workers_samples_per_s": round(two), "rows": rows,
               "epochs": args.epochs, "batch_size": args.batch_size, "cpus": os.cpu_count()}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
