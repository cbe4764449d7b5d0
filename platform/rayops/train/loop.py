"""The training loop every worker runs (a single run and each Tune trial alike).

Reads its shard of the curated dataset, trains with DDP (gloo on CPU, NCCL on GPU) under the
configured precision and learning-rate schedule, reports exact validation metrics every epoch
(sufficient statistics all-reduced over workers), checkpoints on rank 0, stops early when the
target metric stalls, and resumes from the latest checkpoint after a failure: epoch,
optimizer, scheduler, early-stopping state and RNG state included.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import Checkpoint

from rayops import metrics as metric_fns
from rayops.config import PipelineConfig, TrainConfig
from rayops.errors import RayopsError
from rayops.models.mlp import build_model, load_state_dict
from rayops.storage import Location, root_of
from rayops.train.metrics_writer import MetricsWriter

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
PROGRESS_FILE = "progress.json"


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
            optimizer, mode=mode, factor=0.5, patience=train.plateau_patience - 1)
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
            "cuda", enabled=precision == "fp16" and device.type == "cuda")

    def autocast(self) -> Any:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()


class ShardLoader:
    """Batches of one worker's shard. With ``cache`` the shard is pulled once, whole blocks
    at a time through Ray Data, and kept as tensors on the device; every epoch then shuffles
    them in place, which is what a hand-written PyTorch loop does and keeps the accelerator
    fed. Without it every epoch streams through Ray Data with prefetching."""

    def __init__(self, shard: Any, batch_size: int, device: torch.device,
                 label_dtype: torch.dtype, cache: bool, seed: int) -> None:
        self.shard, self.batch_size, self.device = shard, batch_size, device
        self.label_dtype, self.cache, self.seed = label_dtype, cache, seed
        self.cached: tuple[torch.Tensor, torch.Tensor] | None = None
        self.load_seconds = 0.0

    def _batches(self, batch_size: int | None, shuffle_seed: int | None) -> Iterator[Any]:
        return self.shard.iter_torch_batches(
            batch_size=batch_size, device=self.device, prefetch_batches=4,
            dtypes={"features": torch.float32, "label": self.label_dtype},
            local_shuffle_buffer_size=self.batch_size * 8 if shuffle_seed is not None else None,
            local_shuffle_seed=shuffle_seed,
        )

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        started = time.perf_counter()
        blocks = list(self._batches(None, None))
        self.cached = (torch.cat([b["features"] for b in blocks]),
                       torch.cat([b["label"] for b in blocks]))
        self.load_seconds = time.perf_counter() - started
        return self.cached

    def epoch(self, epoch: int, shuffle: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.cache:
            yield from self._from_cache(self.cached or self.load(), epoch, shuffle)
            return
        for batch in self._batches(self.batch_size, self.seed + epoch if shuffle else None):
            yield batch["features"], batch["label"]

    def _from_cache(self, data: tuple[torch.Tensor, torch.Tensor], epoch: int, shuffle: bool
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = data
        order = None
        if shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1000 + epoch)
            order = torch.randperm(len(x), generator=generator).to(x.device)
        for start in range(0, len(x), self.batch_size):
            index = order[start:start + self.batch_size] if order is not None else slice(
                start, start + self.batch_size)
            yield x[index], y[index]


@dataclass
class Progress:
    """What resuming needs besides weights: where we are, how early stopping stands, and
    every epoch's metrics so far (the record MLflow is completed from)."""

    epoch: int = 0
    best: float | None = None
    stale_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def update(self, results: dict[str, float], metric: str, mode: str) -> None:
        value = results[metric]
        better = self.best is None or (value > self.best if mode == "max" else value < self.best)
        self.best, self.stale_epochs = (value, 0) if better else (self.best,
                                                                   self.stale_epochs + 1)
        self.epoch = int(results["epoch"])
        self.history.append(dict(results))

    def stopped_early(self, patience: int | None) -> bool:
        return patience is not None and self.stale_epochs >= patience


# --------------------------------------------------------------------------- epochs


def train_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Any,
                loader: ShardLoader, epoch: int, precision: Precision,
                device: torch.device) -> tuple[float, float]:
    """Mean training loss and the global number of samples seen this epoch."""
    model.train()
    loss_total = torch.zeros((), dtype=torch.float32, device=device)
    count = 0
    for x, y in loader.epoch(epoch, shuffle=True):
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            output = model(x)
            loss = loss_fn(output.squeeze(1) if output.shape[1] == 1 else output, y)
        precision.step(loss, optimizer)
        loss_total.add_(loss.detach(), alpha=len(y))  # one op, no host sync per batch
        count += len(y)
    total = all_reduce(np.array([loss_total.item(), count], dtype=np.float64), device)
    return float(total[0] / max(total[1], 1)), float(total[1])


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: ShardLoader, loss_fn: Any, n_out: int,
             label_state: dict[str, Any], precision: Precision,
             device: torch.device) -> dict[str, float]:
    """Exact validation metrics over all workers' shards."""
    model.eval()
    classification = "classes" in label_state
    stats = np.zeros(n_out * n_out if classification else 5)
    loss_sums = np.zeros(2)
    for x, y in loader.epoch(0, shuffle=False):
        with precision.autocast():
            output = model(x).float()
        loss_sums += (float(loss_fn(output if classification else output.squeeze(1), y))
                      * len(y), len(y))
        if classification:
            predicted = output.argmax(dim=1).cpu().numpy()
            stats += metric_fns.confusion_matrix(predicted, y.cpu().numpy(), n_out).ravel()
        else:
            scale, shift = label_state["std"], label_state["mean"]
            stats += metric_fns.regression_sums(output.squeeze(1).cpu().numpy() * scale + shift,
                                                y.cpu().numpy() * scale + shift)
    stats, loss_sums = all_reduce(stats, device), all_reduce(loss_sums, device)
    values = (metric_fns.classification_metrics(stats.reshape(n_out, n_out))
              if classification else metric_fns.regression_metrics(stats))
    result = {f"valid_{k}": v for k, v in values.items()}
    result["valid_loss"] = float(loss_sums[0] / max(loss_sums[1], 1))
    return result


# --------------------------------------------------------------------------- checkpoints


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def checkpoints_of(cfg: PipelineConfig, run_name: str | None = None) -> Location:
    """Where Ray Train keeps runs' checkpoints (``{root}/checkpoints/{run}``)."""
    location = root_of(cfg.storage).join("checkpoints")
    return location.join(run_name) if run_name else location


# Ray Train's record of a run's checkpoints, rewritten after each one (Train V2's name).
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"


def set_aside_broken_snapshot(run: Location) -> bool:
    """A driver killed while Ray Train rewrote its snapshot leaves it empty or cut short,
    and Ray Train then refuses to start the run. Move such a file aside (the run resumes
    from the newest checkpoint in storage, see :func:`latest_state`); True when it did."""
    snapshot = run.join(SNAPSHOT_FILE)
    if not snapshot.exists():
        return False
    try:
        json.loads(snapshot.read_bytes())
        return False
    except ValueError:
        aside = run.join(f"{SNAPSHOT_FILE}.broken-{int(time.time())}")
        with run.io("set aside the broken snapshot in"):
            run.fs.move(snapshot.path, aside.path)
        logger.warning("Ray Train's snapshot %s was cut short (its driver died while writing "
                       "it); set aside as %s, resuming from the newest stored checkpoint",
                       snapshot.uri, aside.uri)
        return True


def _stored(run: Location) -> list[tuple[int, Location]]:
    """(epoch, folder) of every checkpoint rank 0 wrote for the run, newest first, whether
    or not Ray Train registered it."""
    found = []
    for name in run.list_dir():
        if not name.startswith("checkpoint_"):
            continue
        folder = run.join(name)
        try:
            found.append((int(folder.join(PROGRESS_FILE).read_json()["epoch"]), folder))
        except (RayopsError, ValueError, KeyError):  # partly written: not a checkpoint yet
            continue
    return sorted(found, key=lambda item: -item[0])


def latest_state(run: Location | None, registered: Checkpoint | None) -> dict[str, Any] | None:
    """The newest checkpoint's state: the one Ray Train registered, or a newer one in
    storage whose registration died with the driver. Training resumes after it, so an epoch
    whose metrics may already be in MLflow is never trained (and logged) twice."""
    state = None
    if registered is not None:
        with registered.as_directory() as folder:
            state = load_state_dict(Path(folder) / CHECKPOINT_FILE)
    for epoch, folder in _stored(run) if run is not None else []:
        if state is not None and epoch <= int(state["epoch"]):
            break
        target = folder.join(CHECKPOINT_FILE)
        try:
            return load_state_dict(target.read_bytes(), target.uri)
        except RayopsError:  # an upload cut short: an older checkpoint will do
            continue
    return state


def restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
            run: Location | None) -> Progress:
    """Resume from the newest checkpoint (after a failure or a driver restart)."""
    state = latest_state(run, ray.train.get_checkpoint())
    if state is None:
        return Progress()
    _unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    logger.warning("Resumed from the checkpoint of epoch %d", state["epoch"])
    return Progress(int(state["epoch"]), state["best"], int(state["stale_epochs"]),
                    json.loads(state.get("history", "[]")))


def history_of(state: dict[str, Any] | None) -> list[dict[str, float]]:
    """Every epoch's metrics up to a checkpoint's state, oldest first."""
    return json.loads(state.get("history", "[]")) if state else []


@contextlib.contextmanager
def checkpoint_of(rank: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  scheduler: Any, progress: Progress, meta: dict[str, Any]
                  ) -> Iterator[Checkpoint | None]:
    """Rank 0 writes the checkpoint (weights, optimizer, scheduler, progress, RNG and the
    preprocessing state); other ranks report metrics only."""
    if rank != 0:
        yield None
        return
    with tempfile.TemporaryDirectory() as folder:
        state = {"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "epoch": progress.epoch,
                 "best": progress.best, "stale_epochs": progress.stale_epochs,
                 "history": json.dumps(progress.history),
                 "rng": torch.get_rng_state(), "meta": json.dumps(meta)}
        torch.save(state, Path(folder) / CHECKPOINT_FILE)
        # Written last, read first: finding the newest checkpoint reads only this.
        (Path(folder) / PROGRESS_FILE).write_text(json.dumps({"epoch": progress.epoch}))
        yield Checkpoint.from_directory(folder)


# --------------------------------------------------------------------------- the loop


def train_fn_per_worker(config: dict[str, Any]) -> None:
    """The training loop every worker runs."""
    cfg = PipelineConfig.model_validate(config["cfg"])
    train, spec, label_state = cfg.train, config["architecture"], config["label_state"]
    metric, mode = cfg.target_metric
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(train.seed)
    device = ray.train.torch.get_device()
    if device.type == "cpu":  # as many intra-op threads as CPUs the worker reserved
        torch.set_num_threads(max(1, int(train.cpus_per_worker)))
    model = ray.train.torch.prepare_model(build_model(spec))
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.learning_rate * train.lr_factor,
                                  weight_decay=train.weight_decay)
    scheduler = make_scheduler(optimizer, train, mode)
    run = checkpoints_of(cfg, config["run_name"]) if config.get("run_name") else None
    progress = restore(model, optimizer, scheduler, run)
    resumed_from = progress.epoch
    classification = cfg.data.task == "classification"
    loss_fn = torch.nn.CrossEntropyLoss() if classification else torch.nn.MSELoss()
    label_dtype = torch.int64 if classification else torch.float32
    precision = Precision(train.precision, device)
    train_loader, valid_loader, loaded = shard_loaders(train, device, label_dtype,
                                                       config["cache"], rank)
    writer = MetricsWriter(cfg.tracking, config["run_id"]) if (
        rank == 0 and config.get("run_id")) else None
    try:
        for epoch in range(progress.epoch, train.epochs):
            if progress.stopped_early(train.early_stopping_patience):
                break  # a resumed run that had already stopped early trains no more
            results = run_epoch(model, optimizer, scheduler, loss_fn, (train_loader,
                                valid_loader), epoch, precision, device, spec, label_state)
            if loaded:
                results["data_load_s"], loaded = loaded, 0.0
            results["resumed_from_epoch"] = resumed_from  # proves no epoch is trained twice
            progress.update(results, metric, mode)
            step_schedule(scheduler, results, metric)
            with checkpoint_of(rank, model, optimizer, scheduler, progress,
                               config["meta"]) as ckpt:
                ray.train.report(results, checkpoint=ckpt)
            if writer is not None:
                writer.put(epoch + 1, results)
            if rank == 0 and config.get("feed") is not None:
                config["feed"].put.remote(results)  # console line; never waited on
            if rank == 0 and progress.stopped_early(train.early_stopping_patience):
                logger.warning("Early stop after epoch %d: %s did not improve for %d epochs",
                               epoch + 1, metric, train.early_stopping_patience)
    finally:
        if writer is not None:
            writer.close()


def shard_loaders(train: TrainConfig, device: torch.device, label_dtype: torch.dtype,
                  cache: bool, rank: int) -> tuple[ShardLoader, ShardLoader, float]:
    """This worker's train and validation loaders, and the seconds spent pulling cached
    shards (before the clock starts: that is data loading, not training)."""
    seed = train.seed + 7919 * rank
    train_loader = ShardLoader(ray.train.get_dataset_shard("train"), train.batch_size, device,
                               label_dtype, cache, seed)
    valid_loader = ShardLoader(ray.train.get_dataset_shard("valid"), train.batch_size * 4,
                               device, label_dtype, cache, seed)
    if not cache:
        return train_loader, valid_loader, 0.0
    train_loader.load()
    valid_loader.load()
    return train_loader, valid_loader, train_loader.load_seconds + valid_loader.load_seconds


def run_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
              loss_fn: Any, loaders: tuple[ShardLoader, ShardLoader], epoch: int,
              precision: Precision, device: torch.device, spec: dict[str, Any],
              label_state: dict[str, Any]) -> dict[str, float]:
    """One epoch of training, then exact validation metrics."""
    train_loader, valid_loader = loaders
    started = time.perf_counter()
    train_loss, samples = train_epoch(model, optimizer, loss_fn, train_loader, epoch,
                                      precision, device)
    seconds = time.perf_counter() - started
    results = evaluate(model, valid_loader, loss_fn, spec["n_outputs"], label_state,
                       precision, device)
    results.update(epoch=epoch + 1, train_loss=train_loss, lr=scheduler.get_last_lr()[0],
                   epoch_time_s=seconds, samples_per_s=samples / max(seconds, 1e-9))
    if device.type == "cuda":
        results["gpu_peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return results
