"""Embedding tables sharded across training workers against the same tables replicated
(DDP), on two CPU workers (gloo on 127.0.0.1, one process each, one thread each): the
training state a worker holds for the item table (weights, gradients, AdamW's moments) and
the time a training step takes, for SASRec

- over a big catalogue with ``negatives`` (only lookups of the table), and
- over a smaller one with the softmax over the whole catalogue (scored where the rows are).

    .venv/bin/python tests/benchmarks/bench_sharding.py [--items 1000000] [--softmax-items
        50000] [--steps 10]

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rayops.demo.broker import free_port
from rayops.models.recommend import build_network
from rayops.models.sharding import ignore_in_ddp

BATCH, HISTORY, DIM = 128, 50, 64


def _state_mb(network: torch.nn.Module, optimizer: torch.optim.Optimizer, name: str) -> float:
    """MiB this worker holds for one table: its parameter, gradient and optimizer moments."""
    param = dict(network.named_parameters())[name]
    held = param.numel() * param.element_size() * (2 if param.grad is not None else 1)
    held += sum(
        v.numel() * v.element_size()
        for v in optimizer.state[param].values()
        if torch.is_tensor(v) and v.dim() > 0
    )
    return held / 2**20


def _case(
    rank: int, items: int, negatives: int | None, shard: bool, steps: int
) -> dict[str, float]:
    spec = {
        "family": "sasrec",
        "n_users": 10,
        "n_items": items,
        "dim": DIM,
        "history": HISTORY,
        "k": 10,
        "blocks": 2,
        "heads": 1,
        "dropout": 0.0,
        "negatives": negatives,
        "shard_tables": shard,
    }
    torch.manual_seed(0)
    network = build_network(spec)
    ignore_in_ddp(network)
    model = torch.nn.parallel.DistributedDataParallel(network)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(rank)
    batches = [
        torch.cat(
            [
                torch.ones(BATCH, 1),
                torch.randint(1, items + 1, (BATCH, HISTORY + 1), generator=g).float(),
            ],
            dim=1,
        )
        for _ in range(steps + 1)
    ]
    model.train()
    took = []
    for x in batches:
        dist.barrier()
        started = time.perf_counter()
        optimizer.zero_grad()
        model(x).backward()
        optimizer.step()
        took.append(time.perf_counter() - started)
    name = "items.shard" if shard else "items.weight"
    return {
        "state_mb": _state_mb(network, optimizer, name),
        "step_ms": 1e3 * sorted(took[1:])[len(took[1:]) // 2],
    }  # the first warms up


def _worker(rank: int, port: int, args: Any, out: Any) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        figures = {}
        for label, items, negatives in (
            ("negatives_256", args.items, 256),
            ("softmax", args.softmax_items, None),
        ):
            for shard in (False, True):
                key = f"{label}_{'sharded' if shard else 'replicated'}"
                figures[key] = _case(rank, items, negatives, shard, args.steps)
                if rank == 0:
                    print(key, figures[key], flush=True)
        if rank == 0:
            out.put(figures)
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--softmax-items", type=int, default=50_000)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    context = mp.get_context("spawn")
    out = context.SimpleQueue()
    mp.spawn(_worker, args=(free_port(), args, out), nprocs=2, join=True)
    figures = out.get()
    summary: dict[str, Any] = {
        "workers": 2,
        "dim": DIM,
        "batch": BATCH,
        "history": HISTORY,
        "items": args.items,
        "softmax_items": args.softmax_items,
        **figures,
    }
    for label in ("negatives_256", "softmax"):
        whole, sharded = figures[f"{label}_replicated"], figures[f"{label}_sharded"]
        summary[f"{label}_state_ratio"] = round(sharded["state_mb"] / whole["state_mb"], 3)
        summary[f"{label}_step_ratio"] = round(sharded["step_ms"] / whole["step_ms"], 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
