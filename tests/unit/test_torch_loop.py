"""The training epoch: accumulated batches make one optimizer step, equal to one step on
their rows together, and DDP workers that accumulate still end each step in agreement."""

import os

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rayops.models.torch_loop import Objective, Precision, ShardLoader, train_epoch
from tests.helpers import free_port

CPU = torch.device("cpu")


class CountingSGD(torch.optim.SGD):
    steps = 0

    def step(self, closure=None):  # type: ignore[no-untyped-def]
        self.steps += 1
        return super().step(closure)


def _rows(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3)).astype(np.float32)
    return x, (x @ np.array([1.0, -2.0, 0.5]) + 0.1).astype(np.float32)


def _epoch(
    rows: int, batch_size: int, accumulate: int, wrap=lambda m: m, data=None
) -> tuple[torch.nn.Module, int]:
    """A linear model after one epoch over ``rows`` fixed rows; and its optimizer steps."""
    x, y = data if data is not None else _rows(rows)
    torch.manual_seed(0)
    model = wrap(torch.nn.Linear(3, 1))
    optimizer = CountingSGD(model.parameters(), lr=0.1)
    loader = ShardLoader((x, y), batch_size, CPU, torch.float32, cache=True, seed=1)
    loss, samples = train_epoch(
        model,
        optimizer,
        Objective(torch.nn.MSELoss()),
        loader,
        0,
        Precision("fp32", CPU),
        CPU,
        accumulate,
    )
    world = dist.get_world_size() if dist.is_initialized() else 1
    assert samples == rows * world and loss > 0  # samples of every worker
    return model, optimizer.steps


def test_accumulated_batches_step_once_as_one_batch_of_their_rows():
    whole, steps_whole = _epoch(rows=8, batch_size=8, accumulate=1)
    accumulated, steps_accumulated = _epoch(rows=8, batch_size=4, accumulate=2)
    assert steps_whole == steps_accumulated == 1
    for a, b in zip(whole.parameters(), accumulated.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    stepwise, steps = _epoch(rows=8, batch_size=4, accumulate=1)
    assert steps == 2
    assert not torch.allclose(stepwise.weight, whole.weight)  # the comparison can fail


def test_the_epochs_last_batches_step_even_when_fewer_than_accumulate():
    _, steps = _epoch(rows=20, batch_size=4, accumulate=2)  # 5 batches: 2 + 2 + 1
    assert steps == 3


def _ddp_rank(rank: int, port: int, out) -> None:  # type: ignore[no-untyped-def]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        x, y = _rows(16)
        mine = (x[rank * 8 : rank * 8 + 8], y[rank * 8 : rank * 8 + 8])
        model, steps = _epoch(8, 4, 2, torch.nn.parallel.DistributedDataParallel, mine)
        out.put((rank, steps, [p.detach().numpy().copy() for p in model.module.parameters()]))
    finally:
        dist.destroy_process_group()


def test_ddp_workers_that_accumulate_all_reduce_each_step_and_agree():
    """Two gloo workers, 8 rows each in 2 batches, accumulate 2: one all-reduced step, the
    same as one process stepping once on all 16 rows."""
    port = free_port()
    context = mp.get_context("spawn")
    out = context.Queue()
    procs = [context.Process(target=_ddp_rank, args=(r, port, out)) for r in range(2)]
    for proc in procs:
        proc.start()
    results = sorted((out.get(timeout=60) for _ in procs), key=lambda r: r[0])
    for proc in procs:
        proc.join(timeout=30)
    whole, _ = _epoch(16, 16, 1)
    for _, steps, params in results:
        assert steps == 1
        for got, want in zip(params, whole.parameters(), strict=True):
            np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-5, atol=1e-6)
