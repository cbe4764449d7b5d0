"""Training with Ray Train V2: one loop on every worker, one driver for runs and sweep trials.

``train_fn_per_worker`` runs on each DDP worker (gloo on CPU, NCCL on GPU). It reads its
shard of the curated dataset, reports exact validation metrics (all-reduced sufficient
statistics) every epoch, checkpoints on rank 0, and logs the epoch's metrics to MLflow from
rank 0. ``fit_and_log`` is the driver: a single run and every Tune trial go through it.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import ray.data
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from rayops import metrics as metric_fns
from rayops import tracking
from rayops.config import PipelineConfig
from rayops.data.preprocess import Preprocessor
from rayops.data.versions import DatasetVersion, load_version
from rayops.errors import TrainingError
from rayops.models import Bundle, build_model, load_state_dict
from rayops.storage import root_of

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True)
class TrainOutcome:
    """What a finished training run produced."""

    run_id: str
    metrics: dict[str, float]
    model_uri: str
    checkpoint_path: str


# --------------------------------------------------------------------------- worker side


def _all_reduce(values: np.ndarray, device: torch.device) -> np.ndarray:
    """Sum an array over every worker (identity with one worker)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    tensor = torch.as_tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.cpu().numpy()


def _batches(shard: Any, batch_size: int, device: torch.device, label_dtype: torch.dtype,
             shuffle_seed: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    return shard.iter_torch_batches(
        batch_size=batch_size,
        dtypes={"features": torch.float32, "label": label_dtype},
        device=device,
        prefetch_batches=2,
        local_shuffle_buffer_size=batch_size * 8 if shuffle_seed is not None else None,
        local_shuffle_seed=shuffle_seed,
    )


def _train_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Any,
                 shard: Any, cfg: PipelineConfig, epoch: int, device: torch.device,
                 label_dtype: torch.dtype) -> float:
    model.train()
    sums = np.zeros(2)
    seed = cfg.train.seed * 1000 + epoch
    for batch in _batches(shard, cfg.train.batch_size, device, label_dtype, seed):
        optimizer.zero_grad(set_to_none=True)
        output = model(batch["features"])
        target = batch["label"]
        loss = loss_fn(output.squeeze(1) if output.shape[1] == 1 else output, target)
        loss.backward()
        optimizer.step()
        sums += (float(loss.detach()) * len(target), len(target))
    total = _all_reduce(sums, device)
    return float(total[0] / max(total[1], 1))


@torch.no_grad()
def _evaluate(model: torch.nn.Module, shard: Any, loss_fn: Any, spec: dict[str, Any],
              label_state: dict[str, Any], batch_size: int, device: torch.device,
              label_dtype: torch.dtype) -> dict[str, float]:
    """Exact validation metrics over all workers' shards."""
    model.eval()
    classification = "classes" in label_state
    n_out = spec["n_outputs"]
    stats = np.zeros(n_out * n_out if classification else 5)
    loss_sums = np.zeros(2)
    for batch in _batches(shard, batch_size, device, label_dtype):
        output = model(batch["features"])
        target = batch["label"]
        loss = loss_fn(output if classification else output.squeeze(1), target)
        loss_sums += (float(loss) * len(target), len(target))
        if classification:
            predicted = output.argmax(dim=1).cpu().numpy()
            stats += metric_fns.confusion_matrix(predicted, target.cpu().numpy(), n_out).ravel()
        else:
            scale, shift = label_state["std"], label_state["mean"]
            predicted = output.squeeze(1).cpu().numpy() * scale + shift
            actual = target.cpu().numpy() * scale + shift
            stats += metric_fns.regression_sums(predicted, actual)
    stats = _all_reduce(stats, device)
    loss_sums = _all_reduce(loss_sums, device)
    if classification:
        values = metric_fns.classification_metrics(stats.reshape(n_out, n_out))
    else:
        values = metric_fns.regression_metrics(stats)
    result = {f"valid_{k}": v for k, v in values.items()}
    result["valid_loss"] = float(loss_sums[0] / max(loss_sums[1], 1))
    return result


def _restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Resume from the latest reported checkpoint (after a worker failure); next epoch."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        state = load_state_dict(Path(folder) / CHECKPOINT_FILE)
    target = model.module if hasattr(model, "module") else model
    target.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    logger.info("Resumed from checkpoint after epoch %d", state["epoch"])
    return int(state["epoch"])


@contextmanager
def _checkpoint(rank: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                epoch: int) -> Iterator[Checkpoint | None]:
    """Rank 0 writes the checkpoint; other ranks report metrics only."""
    if rank != 0:
        yield None
        return
    with tempfile.TemporaryDirectory() as folder:
        target = model.module if hasattr(model, "module") else model
        state = {"model": target.state_dict(), "optimizer": optimizer.state_dict(),
                 "epoch": epoch}
        torch.save(state, Path(folder) / CHECKPOINT_FILE)
        yield Checkpoint.from_directory(folder)


def train_fn_per_worker(config: dict[str, Any]) -> None:
    """The training loop every worker runs (for a single run and for each Tune trial)."""
    cfg = PipelineConfig.model_validate(config["cfg"])
    spec, label_state = config["architecture"], config["label_state"]
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(cfg.train.seed)
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(build_model(spec))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.learning_rate,
                                  weight_decay=cfg.train.weight_decay)
    classification = cfg.data.task == "classification"
    loss_fn = torch.nn.CrossEntropyLoss() if classification else torch.nn.MSELoss()
    label_dtype = torch.int64 if classification else torch.float32
    train_shard = ray.train.get_dataset_shard("train")
    valid_shard = ray.train.get_dataset_shard("valid")

    for epoch in range(_restore(model, optimizer), cfg.train.epochs):
        train_loss = _train_epoch(model, optimizer, loss_fn, train_shard, cfg, epoch, device,
                                  label_dtype)
        results = _evaluate(model, valid_shard, loss_fn, spec, label_state,
                            cfg.train.batch_size * 4, device, label_dtype)
        results.update(epoch=epoch + 1, train_loss=train_loss)
        with _checkpoint(rank, model, optimizer, epoch + 1) as checkpoint:
            ray.train.report(results, checkpoint=checkpoint)
        if rank == 0 and config.get("run_id"):
            tracking.log_metrics(cfg.tracking, config["run_id"], results, step=epoch + 1)


# --------------------------------------------------------------------------- driver side


def model_inputs(table: pa.Table, state: dict[str, Any]) -> dict[str, np.ndarray]:
    """Typed curated rows -> the ``features`` matrix and encoded ``label`` the loop eats.
    Validation rows whose class never occurs in training are left out."""
    pre = Preprocessor.from_dict(state)
    label = pre.encode_label(table.column(pre.label))
    keep = label >= 0 if pre.task == "classification" else np.ones(len(label), dtype=bool)
    return {"features": pre.transform(table.filter(pa.array(keep))), "label": label[keep]}


def load_datasets(version: DatasetVersion) -> dict[str, ray.data.Dataset]:
    """Model inputs of the curated splits, materialized: a small dataset then costs no CPU
    during training, which keeps 2 workers on a 2-core machine from starving the read."""
    state = version.manifest["preprocessor"]
    return {
        split: version.read(split).map_batches(
            model_inputs, batch_format="pyarrow", fn_kwargs={"state": state}
        ).materialize()
        for split in ("train", "valid")
    }


def architecture(cfg: PipelineConfig, version: DatasetVersion) -> dict[str, Any]:
    pre = version.preprocessor
    return {"n_inputs": pre.n_features, "n_outputs": pre.n_outputs,
            "hidden_sizes": list(cfg.model.hidden_sizes), "dropout": cfg.model.dropout,
            "activation": cfg.model.activation}


def build_trainer(cfg: PipelineConfig, version: DatasetVersion,
                  datasets: dict[str, ray.data.Dataset], run_name: str, run_id: str | None,
                  callbacks: Sequence[Any] = ()) -> TorchTrainer:
    """The TorchTrainer for one training run; checkpoints go under the storage root."""
    metric, mode = cfg.target_metric
    checkpoints = root_of(cfg.storage).join("checkpoints")
    resources = {"CPU": cfg.train.cpus_per_worker}
    if cfg.train.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_fn_per_worker,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "architecture": architecture(cfg, version),
            "label_state": version.preprocessor.label_state,
            "run_id": run_id,
        },
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=run_name,
            storage_path=checkpoints.path if not checkpoints.is_local else checkpoints.uri,
            storage_filesystem=None if checkpoints.is_local else checkpoints.fs,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.checkpoints_to_keep,
                                               checkpoint_score_attribute=metric,
                                               checkpoint_score_order=mode),
            callbacks=list(callbacks),
        ),
        datasets=datasets,
    )


def _best_checkpoint(result: Any, metric: str, mode: str) -> tuple[Checkpoint, dict[str, Any]]:
    if result.error is not None:
        raise TrainingError(f"training failed: {result.error}")
    ranked = [(c, m) for c, m in (result.best_checkpoints or []) if metric in m]
    if not ranked:
        raise TrainingError(f"training reported no checkpoint with metric {metric!r}")
    pick = max if mode == "max" else min
    return pick(ranked, key=lambda cm: cm[1][metric])


def _input_example(version: DatasetVersion) -> pd.DataFrame:
    """A few plausible raw records (the training means / most common categories)."""
    row: dict[str, Any] = {}
    for feat in version.preprocessor.features:
        if feat["kind"] in ("categorical", "text"):
            row[feat["name"]] = feat["categories"][0] if feat["categories"] else None
        elif feat["kind"] == "integer":
            row[feat["name"]] = round(feat["mean"])
        elif feat["kind"] == "boolean":
            row[feat["name"]] = feat["mean"] >= 0.5
        elif feat["kind"] == "datetime":
            row[feat["name"]] = "2024-01-01T00:00:00Z"
        else:
            row[feat["name"]] = round(feat["mean"], 3)
    return pd.DataFrame([row])


def fit_and_log(cfg: PipelineConfig, version: DatasetVersion,
                datasets: dict[str, ray.data.Dataset], run_id: str, run_name: str,
                callbacks: Sequence[Any] = ()) -> TrainOutcome:
    """Train, pick the best checkpoint, and log it to MLflow as a model bundle."""
    metric, mode = cfg.target_metric
    trainer = build_trainer(cfg, version, datasets, run_name, run_id, callbacks)
    result = trainer.fit()
    checkpoint, best = _best_checkpoint(result, metric, mode)
    with checkpoint.as_directory() as folder:
        state = load_state_dict(Path(folder) / CHECKPOINT_FILE)
    model = build_model(architecture(cfg, version))
    model.load_state_dict(state["model"])
    best_metrics = {k: float(v) for k, v in best.items() if isinstance(v, (int, float))}
    meta = {
        "architecture": architecture(cfg, version),
        "preprocessor": version.manifest["preprocessor"],
        "schema": version.manifest["schema"],
        "dataset": version.id,
        "metrics": best_metrics,
        "run_id": run_id,
        "pipeline": cfg.name,
    }
    with tempfile.TemporaryDirectory(prefix="rayops-") as folder:
        bundle_dir = Bundle(model, meta).save(Path(folder) / "bundle")
        required = {name: not spec["nullable"] for name, spec in version.manifest["schema"].items()
                    if name != cfg.data.label}
        model_uri = tracking.log_model(cfg.tracking, run_id, bundle_dir, _input_example(version),
                                       required)
    tracking.log_metrics(cfg.tracking, run_id, {f"best_{k}": v for k, v in best_metrics.items()},
                         step=int(best_metrics.get("epoch", 0)))
    return TrainOutcome(run_id, best_metrics, model_uri, checkpoint.path)


def run_params(cfg: PipelineConfig, version: DatasetVersion) -> dict[str, Any]:
    """What a training run logs as MLflow params (flattened later)."""
    return {"model": cfg.model.model_dump(), "train": cfg.train.model_dump(),
            "data": {"dataset_version": version.id, "task": cfg.data.task,
                     "label": cfg.data.label, "features": ",".join(cfg.data.feature_names)},
            "dataset_rows": version.manifest["rows"]}


def run_training(cfg: PipelineConfig, version: DatasetVersion | None = None) -> TrainOutcome:
    """One tracked training run on the latest (or given) curated dataset version."""
    version = version or load_version(cfg)
    run_name = f"{cfg.name}-train"
    run_id = tracking.start_run(cfg.tracking, cfg.experiment_name, run_name,
                                params=run_params(cfg, version),
                                tags={"rayops.dataset_version": version.id})
    try:
        outcome = fit_and_log(cfg, version, load_datasets(version), run_id,
                              f"{run_name}-{run_id[:8]}")
    except BaseException:
        tracking.end_run(cfg.tracking, run_id, status="FAILED")
        raise
    tracking.end_run(cfg.tracking, run_id)
    return outcome
