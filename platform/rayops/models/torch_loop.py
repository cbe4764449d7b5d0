"""The training loop every worker runs (a single run and each Tune trial alike).

Reads its shard of the curated dataset, trains with DDP (gloo on CPU, NCCL on GPU) under the
configured precision and learning-rate schedule, reports exact validation metrics every epoch
(sufficient statistics all-reduced over workers), checkpoints on rank 0, stops early when the
target metric stalls, and resumes from the latest checkpoint after a failure: epoch,
optimizer, scheduler, early-stopping state and RNG state included.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from rayops.config import TrainConfig
from rayops.families import family_named
from rayops.models import session
from rayops.models.checkpoints import Progress, checkpoint_of, checkpoints_of, restore
from rayops.models.family import LoopConfig
from rayops.models.metrics_writer import MetricsWriter
from rayops.models.sharding import ignore_in_ddp
from rayops.tasks import Task

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- helpers


def all_reduce(values: np.ndarray, device: torch.device) -> np.ndarray:
    """Sum an array over every worker (identity with one worker)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    tensor = torch.as_tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.cpu().numpy()


def lr_multiplier(train: TrainConfig) -> Any:
    """Per-epoch factor on the scaled learning rate: warmup from 1/10, then the schedule."""

    def factor(epoch: int) -> float:
        if epoch < train.warmup_epochs:
            return 0.1 + 0.9 * epoch / train.warmup_epochs
        done = (epoch - train.warmup_epochs) / max(train.epochs - train.warmup_epochs, 1)
        if train.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * done))
        if train.lr_schedule == "step":
            return 0.1 ** (int(done >= 0.5) + int(done >= 0.75))
        return 1.0

    return factor


def make_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, mode: str) -> Any:
    """The learning-rate schedule: on a plateau of the target metric, or per epoch."""
    if train.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="max" if mode == "max" else "min",
            factor=0.5,
            patience=train.plateau_patience - 1,
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(train))


def step_schedule(scheduler: Any, results: dict[str, float], metric: str) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(results[metric])
    else:
        scheduler.step()


class Precision:
    """Autocast and (for fp16 on GPU) a gradient scaler, or nothing for fp32."""

    def __init__(self, precision: str, device: torch.device) -> None:
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=precision == "fp16" and device.type == "cuda"
        )

    def autocast(self) -> Any:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.step(optimizer)
        self.scaler.update()


class ShardLoader:
    """Batches of one worker's shard: ``(features, label)`` arrays the driver sent through
    the object store, or a Ray Data shard. With ``cache`` (always for arrays) the shard is
    pulled once, whole blocks at a time, and kept as tensors on the device; every epoch then
    shuffles them in place, which is what a hand-written PyTorch loop does and keeps the
    accelerator fed. Without it every epoch streams through Ray Data with prefetching."""

    def __init__(
        self,
        shard: Any,
        batch_size: int,
        device: torch.device,
        label_dtype: torch.dtype,
        cache: bool,
        seed: int,
    ) -> None:
        self.shard, self.batch_size, self.device = shard, batch_size, device
        self.label_dtype, self.seed = label_dtype, seed
        self.cache = cache or isinstance(shard, tuple)
        self.cached: tuple[torch.Tensor, torch.Tensor] | None = None
        self.load_seconds = 0.0

    def _batches(self, batch_size: int | None, shuffle_seed: int | None) -> Iterator[Any]:
        return self.shard.iter_torch_batches(
            batch_size=batch_size,
            device=self.device,
            prefetch_batches=4,
            dtypes={"features": torch.float32, "label": self.label_dtype},
            local_shuffle_buffer_size=self.batch_size * 8 if shuffle_seed is not None else None,
            local_shuffle_seed=shuffle_seed,
        )

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        started = time.perf_counter()
        if isinstance(self.shard, tuple):
            x, y = self.shard  # views of read-only object-store buffers: copied here
            self.cached = (
                torch.tensor(x, dtype=torch.float32, device=self.device),
                torch.tensor(y, dtype=self.label_dtype, device=self.device),
            )
        else:
            blocks = list(self._batches(None, None))
            self.cached = (
                torch.cat([b["features"] for b in blocks]),
                torch.cat([b["label"] for b in blocks]),
            )
        self.load_seconds = time.perf_counter() - started
        return self.cached

    def epoch(self, epoch: int, shuffle: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.cache:
            yield from self._from_cache(self.cached or self.load(), epoch, shuffle)
            return
        for batch in self._batches(self.batch_size, self.seed + epoch if shuffle else None):
            yield batch["features"], batch["label"]

    def _from_cache(
        self, data: tuple[torch.Tensor, torch.Tensor], epoch: int, shuffle: bool
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = data
        order = None
        if shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1000 + epoch)
            order = torch.randperm(len(x), generator=generator).to(x.device)
        for start in range(0, len(x), self.batch_size):
            index = (
                order[start : start + self.batch_size]
                if order is not None
                else slice(start, start + self.batch_size)
            )
            yield x[index], y[index]


class Objective:
    """What the loop minimises and reports for a network: the task's loss on its outputs
    (a recommender brings its own: :class:`rayops.models.recommend.RankingObjective`)."""

    def __init__(self, loss_fn: Any) -> None:
        self.loss_fn = loss_fn

    @staticmethod
    def _flat(output: torch.Tensor) -> torch.Tensor:
        return output.squeeze(1) if output.shape[1] == 1 else output

    def train_loss(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self._flat(model(x)), y)

    def evaluate(
        self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, float]:
        """The outputs the task's metrics read, and the batch's summed loss."""
        output = self._flat(model(x).float())
        return output, float(self.loss_fn(output, y)) * len(y)


# --------------------------------------------------------------------------- epochs


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    objective: Objective,
    loader: ShardLoader,
    epoch: int,
    precision: Precision,
    device: torch.device,
    accumulate: int = 1,
) -> tuple[float, float]:
    """Mean training loss and the global number of samples seen this epoch. The optimizer
    steps once every ``accumulate`` batches (and after the last); under DDP the batches in
    between add to the local gradients only, so the workers all-reduce once per step."""
    model.train()
    loss_total = torch.zeros((), dtype=torch.float32, device=device)
    count = 0
    optimizer.zero_grad(set_to_none=True)
    for index, last, (x, y) in _marked(loader.epoch(epoch, shuffle=True)):
        steps = last or (index + 1) % accumulate == 0
        with _gradient_sync(model, steps):  # forward and backward both inside no_sync
            with precision.autocast():
                loss = objective.train_loss(model, x, y)
            precision.backward(loss / accumulate if accumulate > 1 else loss)
        if steps:
            precision.step(optimizer)
            optimizer.zero_grad(set_to_none=True)
        loss_total.add_(loss.detach(), alpha=len(y))  # one op, no host sync per batch
        count += len(y)
    total = all_reduce(np.array([loss_total.item(), count], dtype=np.float64), device)
    return float(total[0] / max(total[1], 1)), float(total[1])


def _marked(batches: Iterator[Any]) -> Iterator[tuple[int, bool, Any]]:
    """Each batch with its index and whether it is the epoch's last (one batch of lookahead:
    a streamed shard has no length)."""
    pending: Any = None
    index = -1
    for index, batch in enumerate(batches):
        if index:
            yield index - 1, False, pending
        pending = batch
    if index >= 0:
        yield index, True, pending


def _gradient_sync(model: torch.nn.Module, sync: bool) -> Any:
    """DDP's all-reduce on this backward pass, or (accumulating) none."""
    if sync or not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: ShardLoader,
    objective: Objective,
    task: Task,
    label_state: dict[str, Any],
    precision: Precision,
    device: torch.device,
) -> dict[str, float]:
    """Exact validation metrics over all workers' shards (the task's sufficient statistics,
    summed over workers before they become metrics)."""
    model.eval()
    stats: np.ndarray | None = None
    loss_sums = np.zeros(2)
    for x, y in loader.epoch(0, shuffle=False):
        with precision.autocast():
            output, loss = objective.evaluate(model, x, y)
        loss_sums += (loss, len(y))
        shard = task.sufficient_stats(output.cpu().numpy(), y.cpu().numpy(), label_state)
        stats = shard if stats is None else stats + shard
    if stats is None:  # an empty shard: zeros of the right shape, so the all-reduce matches
        stats = task.sufficient_stats(
            np.zeros((0, task.n_outputs(label_state))), np.zeros(0), label_state
        )
    stats, loss_sums = all_reduce(stats, device), all_reduce(loss_sums, device)
    result = task.metrics_of(stats, label_state)
    result["valid_loss"] = float(loss_sums[0] / max(loss_sums[1], 1))
    return result


# --------------------------------------------------------------------------- the loop


@dataclass
class Worker:
    """One worker's model, optimizer, schedule, loaders and where it stands."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    objective: Objective
    loaders: tuple[ShardLoader, ShardLoader]
    precision: Precision
    device: torch.device
    progress: Progress
    rank: int
    loaded_s: float  # seconds spent pulling cached shards, reported with the first epoch


def _worker(loop: LoopConfig) -> Worker:
    """Build the model (DDP), restore the newest checkpoint, and open the shards."""
    train = loop.cfg.train
    rank, _ = session.world()
    torch.manual_seed(train.seed)
    device = _device()
    if device.type == "cpu":  # as many intra-op threads as CPUs the worker reserved
        torch.set_num_threads(max(1, int(train.cpus_per_worker)))
    family = family_named(loop.architecture["family"])
    network = family.network(loop.architecture)
    ignore_in_ddp(network)  # a sharded table's rows are this worker's own
    model = _prepared(network, device)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=train.learning_rate * train.lr_factor,
        weight_decay=train.weight_decay,
    )
    scheduler = make_scheduler(optimizer, train, loop.cfg.target_metric[1])
    run = checkpoints_of(loop.cfg, loop.run_name) if loop.run_name else None
    progress = restore(model, optimizer, scheduler, run)
    train_loader, valid_loader, loaded = shard_loaders(loop, device, rank)
    return Worker(
        model,
        optimizer,
        scheduler,
        family.objective(loop),
        (train_loader, valid_loader),
        Precision(train.precision, device),
        device,
        progress,
        rank,
        loaded,
    )


def _device() -> torch.device:
    """The worker's device: Ray Train's pick on its workers; in this process, the GPU Ray
    gave it (``CUDA_VISIBLE_DEVICES`` holds only that one) or the CPU."""
    local = session.local()
    if local is None:
        import ray.train.torch

        return ray.train.torch.get_device()
    return torch.device("cuda", 0) if local.use_gpu else torch.device("cpu")


def _prepared(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The network on its device, wrapped in DDP by Ray Train when there are several workers
    (a loop in this process is the only worker: nothing to wrap)."""
    if session.local() is not None:
        return network.to(device)
    import ray.train.torch

    return ray.train.torch.prepare_model(network)


def train_fn_per_worker(config: dict[str, Any]) -> None:
    """The training loop every worker runs."""
    loop = LoopConfig.of(config)
    train, (metric, mode) = loop.cfg.train, loop.cfg.target_metric
    w = _worker(loop)
    resumed_from = w.progress.epoch
    writer = (
        MetricsWriter(loop.cfg.tracking, loop.run_id) if (w.rank == 0 and loop.run_id) else None
    )
    try:
        for epoch in range(w.progress.epoch, train.epochs):
            if w.progress.stopped_early(train.early_stopping_patience):
                break  # a resumed run that had already stopped early trains no more
            results = run_epoch(w, epoch, loop)
            if w.loaded_s:
                results["data_load_s"], w.loaded_s = w.loaded_s, 0.0
            results["resumed_from_epoch"] = resumed_from  # proves no epoch is trained twice
            w.progress.update(results, metric, mode)
            step_schedule(w.scheduler, results, metric)
            with checkpoint_of(
                w.rank, w.model, w.optimizer, w.scheduler, w.progress, loop.meta
            ) as ckpt:
                session.report(results, ckpt)
            if writer is not None:
                writer.put(epoch + 1, results)
            if w.rank == 0 and loop.feed is not None:
                loop.feed.put.remote(results)  # console line; never waited on
            if w.rank == 0 and w.progress.stopped_early(train.early_stopping_patience):
                logger.warning(
                    "Early stop after epoch %d: %s did not improve for %d epochs",
                    epoch + 1,
                    metric,
                    train.early_stopping_patience,
                )
    finally:
        if writer is not None:
            writer.close()


def shard_loaders(
    loop: LoopConfig, device: torch.device, rank: int
) -> tuple[ShardLoader, ShardLoader, float]:
    """This worker's train and validation loaders, and the seconds spent pulling cached
    shards (before the clock starts: that is data loading, not training)."""
    train, label_dtype = loop.cfg.train, loop.task.torch_label_dtype()
    assert train.batch_size is not None  # resolved when the config was loaded
    seed = train.seed + 7919 * rank
    train_loader = ShardLoader(
        loop.shard("train"), train.batch_size, device, label_dtype, loop.cache, seed
    )
    valid_loader = ShardLoader(
        loop.shard("valid"), train.batch_size * 4, device, label_dtype, loop.cache, seed
    )
    if not train_loader.cache:
        return train_loader, valid_loader, 0.0
    train_loader.load()
    valid_loader.load()
    return train_loader, valid_loader, train_loader.load_seconds + valid_loader.load_seconds


def run_epoch(w: Worker, epoch: int, loop: LoopConfig) -> dict[str, float]:
    """One epoch of training, then exact validation metrics."""
    train_loader, valid_loader = w.loaders
    started = time.perf_counter()
    train_loss, samples = train_epoch(
        w.model,
        w.optimizer,
        w.objective,
        train_loader,
        epoch,
        w.precision,
        w.device,
        loop.cfg.train.accumulate_grad_batches or 1,  # resolved when the run started
    )
    seconds = time.perf_counter() - started
    results = evaluate(
        w.model, valid_loader, w.objective, loop.task, loop.label_state, w.precision, w.device
    )
    results.update(
        epoch=epoch + 1,
        train_loss=train_loss,
        lr=w.scheduler.get_last_lr()[0],
        epoch_time_s=seconds,
        samples_per_s=samples / max(seconds, 1e-9),
    )
    if w.device.type == "cuda":
        results["gpu_peak_memory_mb"] = torch.cuda.max_memory_allocated(w.device) / 2**20
    return results
