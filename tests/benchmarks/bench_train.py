"""Training throughput: rayops (Ray Train, DDP) against a plain single-process PyTorch loop.

Same curated data (synthetic churn), same model, optimizer, batch size, epochs and threads
per process. Samples/s count the training epochs only (validation excluded on both sides);
rayops' first epoch includes streaming the shard through Ray Data. The steady-state ratio
drops epoch 1 on both sides. Next to the loop's throughput it reports each side's whole-run
wall time (for rayops: trainer start, data loading, checkpoints, MLflow logging and the
logged model). Also measures the scaling from 1 to 2 workers, with the default
``accumulate_grad_batches`` (4 for 2 CPU workers: one all-reduce per 4 batches), and each
run's validation metric, so that speed is never bought with quality.

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


def plain_pytorch(cfg: PipelineConfig, version: DatasetVersion) -> tuple[list[float], float]:
    """A hand-written loop over in-memory tensors: (seconds of each training epoch, wall
    seconds of the whole run, preparing the tensors included)."""
    begun = time.perf_counter()
    torch.set_num_threads(int(cfg.train.cpus_per_worker))
    torch.manual_seed(cfg.train.seed)
    inputs = model_inputs(version.table("train"), version.manifest.preprocessor)
    x, y = torch.from_numpy(inputs["features"]), torch.from_numpy(inputs["label"])
    model = build_model(architecture(cfg, version))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss()
    batch = cfg.train.batch_size
    seconds: list[float] = []
    for epoch in range(cfg.train.epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for start in range(0, len(x), batch):
            index = order[start : start + batch]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[index]), y[index])
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - started)
    return seconds, time.perf_counter() - begun


def rayops_training(cfg: PipelineConfig, version: DatasetVersion) -> tuple[list[float], float]:
    """(seconds of each training epoch, wall seconds of the whole run: trainer start, data
    loading, checkpoints, MLflow logging, the logged model). Prints where the time went."""
    started = time.perf_counter()
    outcome = run_training(cfg, version)
    wall = time.perf_counter() - started
    client = MlflowClient(cfg.tracking.uri)
    epochs = [m.value for m in client.get_metric_history(outcome.run_id, "epoch_time_s")]
    parts = dict(outcome.seconds)
    parts["epochs"] = sum(epochs)
    # the fit beyond its training epochs: workers starting, shards, validation, checkpoints
    parts["train"] -= parts["epochs"]
    parts["run record"] = wall - sum(parts.values())  # MLflow run start, records
    shown = ", ".join(
        f"{name} {parts[name]:.1f}s"
        for name in ("run record", "inputs", "train", "epochs", "model", "mlflow", "plots")
    )
    print(f"  where {wall:.1f}s went: {shown} ('train': the fit beyond its epochs)", flush=True)
    PARTS[cfg.train.num_workers] = parts
    metric = cfg.target_metric[0]
    QUALITY[cfg.train.num_workers] = outcome.metrics[metric]
    used = client.get_run(outcome.run_id).data.params["train.accumulate_grad_batches"]
    print(f"  best {metric} {outcome.metrics[metric]:.4f}; {used} batch(es) a step", flush=True)
    return epochs, wall


PARTS: dict[int, dict[str, float]] = {}  # workers -> where a run's time went
QUALITY: dict[int, float] = {}  # workers -> the run's best validation metric


def rate(samples: float, seconds: list[float], skip: int = 0) -> float:
    """Samples/s over the epochs after the first ``skip`` (both sides skip the same)."""
    return samples * (len(seconds) - skip) / sum(seconds[skip:])


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
        work,
        f"train.epochs={args.epochs}",
        f"train.batch_size={args.batch_size}",
        "train.num_workers=1",
        "train.cpus_per_worker=1",
        "train.data_loading=memory",
        "train.lr_scaling=none",
        "train.lr_schedule=constant",
        "train.checkpoints_to_keep=1",
    )
    churn.write(churn.generate(args.rows, seed=3), file_source(cfg).location, files=4)
    version = ingest(cfg)
    rows = version.manifest.rows.train
    print(
        f"{rows:,} training rows, {args.epochs} epochs, batch {args.batch_size}, "
        f"1 thread per process",
        flush=True,
    )

    base_epochs, base_wall = plain_pytorch(cfg, version)
    baseline, base_steady = rate(rows, base_epochs), rate(rows, base_epochs, skip=1)
    print(
        f"plain PyTorch loop        {baseline:>10,.0f} samples/s  ({base_steady:,.0f} "
        f"without epoch 1; run wall {base_wall:.1f}s)",
        flush=True,
    )
    epochs, wall_one = rayops_training(cfg, version)
    one, one_steady = rate(rows, epochs), rate(rows, epochs, skip=1)
    print(
        f"rayops, 1 worker          {one:>10,.0f} samples/s  ({one_steady:,.0f} without "
        f"epoch 1; run wall {wall_one:.1f}s)",
        flush=True,
    )
    epochs_two, wall_two = rayops_training(cfg.with_overrides({"train.num_workers": 2}), version)
    two, two_steady = rate(rows, epochs_two), rate(rows, epochs_two, skip=1)
    print(
        f"rayops, 2 workers (DDP)   {two:>10,.0f} samples/s  ({two_steady:,.0f} without "
        f"epoch 1; run wall {wall_two:.1f}s)",
        flush=True,
    )
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    summary = {
        "rayops_samples_per_s": round(one),
        "baseline_samples_per_s": round(baseline),
        "ratio": round(one / baseline, 3),
        "ratio_without_epoch_1": round(one_steady / base_steady, 3),
        "run_wall_s": round(wall_one, 1),
        "baseline_wall_s": round(base_wall, 1),
        "wall_ratio": round(wall_one / base_wall, 3),
        "scaling_2_workers": round(two / one, 3),
        "rayops_2_workers_samples_per_s": round(two),
        "valid_metric_1_worker": round(QUALITY[1], 4),
        "valid_metric_2_workers": round(QUALITY[2], 4),
        "rows": rows,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "parts_1_worker_s": {k: round(v, 2) for k, v in PARTS[1].items()},
        "parts_2_workers_s": {k: round(v, 2) for k, v in PARTS[2].items()},
        "cpus": os.cpu_count(),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
