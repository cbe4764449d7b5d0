"""The body of gpu_check.sh: GPU training throughput, utilization and memory."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import threading
import time

import torch
from _setup import demo_config, start_bench
from bench_train import rate, rayops_training  # the script folder is on sys.path

from rayops.data.ingest import file_source, ingest
from rayops.demo import churn
from rayops.models import build_model
from rayops.train import architecture
from rayops.train.driver import model_inputs


class Utilization(threading.Thread):
    """Samples nvidia-smi every 200 ms while running."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
            ).stdout.split()
            if out:
                self.samples.append(float(out[0]))
            time.sleep(0.2)


def plain_gpu(cfg, version, batch: int, epochs: int) -> float:
    device = torch.device("cuda")
    inputs = model_inputs(version.table("train"), version.manifest.preprocessor)
    x = torch.from_numpy(inputs["features"]).to(device)
    y = torch.from_numpy(inputs["label"]).to(device)
    model = build_model(architecture(cfg, version)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x), device=device)
        for start in range(0, len(x), batch):
            index = order[start : start + batch]
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = loss_fn(model(x[index]), y[index])
            loss.backward()
            optimizer.step()
    torch.cuda.synchronize()
    return len(x) * epochs / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4096)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    gpus = torch.cuda.device_count()
    import ray

    work = start_bench("gpu", num_cpus=None)
    cfg = demo_config(
        work,
        f"train.epochs={args.epochs}",
        f"train.batch_size={args.batch_size}",
        "train.use_gpu=true",
        "train.precision=bf16",
        "train.num_workers=1",
        "train.cpus_per_worker=2",
        "train.data_loading=memory",
        "model.hidden_sizes=[512,256]",
    )
    churn.write(churn.generate(args.rows, seed=3), file_source(cfg).location, files=8)
    version = ingest(cfg)
    baseline = plain_gpu(cfg, version, args.batch_size, args.epochs)
    print(f"plain PyTorch on GPU (bf16)  {baseline:>12,.0f} samples/s", flush=True)
    util = Utilization()
    util.start()
    rows = version.manifest.rows.train
    epochs, wall = rayops_training(cfg, version)
    one = rate(rows, epochs)
    util.stop.set()
    from mlflow import MlflowClient

    client = MlflowClient(cfg.tracking.uri)
    runs = client.search_runs(
        [client.get_experiment_by_name(cfg.experiment_name).experiment_id],
        max_results=1,
        order_by=["start_time DESC"],
    )
    peak = runs[0].data.metrics.get("gpu_peak_memory_mb", float("nan"))
    # Every sample counts, idle ones included: time the GPU waits (worker start, data
    # loading, checkpoints) is what the mean must show.
    samples = util.samples or [0.0]
    mean_util = sum(samples) / len(samples)
    idle = sum(s == 0 for s in samples) / len(samples)
    print(
        f"rayops 1 GPU (bf16)          {one:>12,.0f} samples/s  run wall {wall:.1f}s  "
        f"GPU util mean {mean_util:.0f}% over {len(samples)} samples ({idle:.0%} idle, "
        f"max {max(samples):.0f}%)  peak GPU memory {peak:.0f} MB",
        flush=True,
    )
    summary = {
        "gpus": gpus,
        "gpu": torch.cuda.get_device_name(0),
        "rayops_samples_per_s": round(one),
        "baseline_samples_per_s": round(baseline),
        "ratio": round(one / baseline, 3),
        "gpu_util_mean_pct": round(mean_util, 1),
        "gpu_idle_fraction": round(idle, 3),
        "gpu_peak_memory_mb": round(peak, 1),
    }
    if gpus >= 2:
        epochs_two, _ = rayops_training(cfg.with_overrides({"train.num_workers": 2}), version)
        summary["scaling_2_gpus"] = round(rate(rows, epochs_two) / one, 3)
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
