"""What a gradient all-reduce costs two CPU workers of a small model: steps/s of two gloo DDP
processes (one thread each, 256 rows a step) against one process, with the all-reduce on
every step, or every 2 or 4 (``no_sync`` between: a larger effective batch).

No Ray: this isolates the synchronisation that keeps ``bench_train.py``'s
``scaling_2_workers`` below 1, to size a change that syncs less often.

    .venv/bin/python tests/benchmarks/bench_ddp_sync.py [--steps 309] [--epochs 3]

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

BATCH, INPUTS = 256, 40


def network() -> torch.nn.Module:
    """About the churn demo MLP's size."""
    return torch.nn.Sequential(
        torch.nn.Linear(INPUTS, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 2),
    )


def step_ms(model: torch.nn.Module, steps: int, epochs: int, every: int = 1) -> float:
    """Milliseconds a step takes in the last epoch; the optimizer steps (and DDP all-reduces)
    every ``every`` steps."""
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    x, y = torch.randn(BATCH * steps, INPUTS), torch.randint(0, 2, (BATCH * steps,))
    took = 0.0
    for _ in range(epochs):
        started = time.perf_counter()
        for step in range(steps):
            sync = (step + 1) % every == 0
            rows = slice(step * BATCH, (step + 1) * BATCH)
            quiet = contextlib.nullcontext() if sync else model.no_sync()
            with quiet:
                torch.nn.functional.cross_entropy(model(x[rows]), y[rows]).backward()
            if sync:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        took = time.perf_counter() - started
    return took / steps * 1000


def worker(rank: int, every: int, steps: int, epochs: int, port: int, out: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    ms = step_ms(torch.nn.parallel.DistributedDataParallel(network()), steps, epochs, every)
    if rank == 0:
        out.put(ms)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=309, help="steps per worker per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    one = step_ms(network(), 2 * args.steps, args.epochs)
    print(f"1 process: {one:.3f} ms a step", flush=True)
    figures: dict[str, float] = {"one_process_step_ms": round(one, 3)}
    context = mp.get_context("spawn")
    for every in (1, 2, 4):
        out = context.Queue()
        procs = [
            context.Process(target=worker, args=(r, every, args.steps, args.epochs, 29533, out))
            for r in range(2)
        ]
        for proc in procs:
            proc.start()
        ms = out.get(timeout=600)
        for proc in procs:
            proc.join()
        scaling = 2 * one / ms
        print(
            f"2 processes, all-reduce every {every} step(s): {ms:.3f} ms a step each, "
            f"scaling {scaling:.2f}",
            flush=True,
        )
        figures[f"scaling_sync_every_{every}"] = round(scaling, 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
