"""The XGBoost family's loop on every worker (Ray Train's ``XGBoostTrainer``).

Each worker turns its shards of the same model inputs the MLP reads (the fitted
preprocessing's matrix) into DMatrix objects; XGBoost's collective, set up by Ray Train,
builds every tree from all workers' histograms. Every ``report_every`` rounds the loop
reports exact validation metrics (sufficient statistics summed over workers, the same
functions as the MLP's) with a checkpoint in XGBoost's UBJSON format; it stops when the
validation loss has not improved for ``early_stopping_rounds`` rounds and reports the best
round's model last. After a worker failure the run continues from the latest checkpoint's
trees, with its early-stopping state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ray.train import Checkpoint

from rayops.config import PipelineConfig
from rayops.models import session
from rayops.models.family import LoopConfig
from rayops.models.metrics_writer import MetricsWriter
from rayops.models.xgboost import MODEL_FILE, load_booster, require_xgboost
from rayops.tasks.forecasting import QUANTILES

logger = logging.getLogger(__name__)

HISTORY_FILE = "history.json"
PROGRESS_FILE = "progress.json"


# Per task: XGBoost's objective and eval metric, and the power that turns the eval metric
# into the loss the MLP reports (log loss as is; RMSE squared, the MLP's MSE).
OBJECTIVES: dict[str, tuple[dict[str, Any], float]] = {
    # softprob for two classes too: one output layout (probabilities per class) for all
    "classification": ({"objective": "multi:softprob", "eval_metric": "mlogloss"}, 1.0),
    "regression": ({"objective": "reg:squarederror", "eval_metric": "rmse"}, 2.0),
    # one output per quantile, each learned with its pinball loss (the MLP's loss)
    "forecasting": (
        {
            "objective": "reg:quantileerror",
            "eval_metric": "quantile",
            "quantile_alpha": list(QUANTILES),
        },
        1.0,
    ),
}


def booster_params(cfg: PipelineConfig, n_outputs: int) -> dict[str, Any]:
    """XGBoost's parameters from ``model.xgboost`` and the task."""
    boost = cfg.model.xgboost
    params: dict[str, Any] = {
        "tree_method": "hist",
        "device": "cuda" if cfg.train.use_gpu else "cpu",
        "nthread": max(1, int(cfg.train.cpus_per_worker)),
        "seed": cfg.train.seed,
        "eta": boost.learning_rate,
        "max_depth": boost.max_depth,
        "min_child_weight": boost.min_child_weight,
        "subsample": boost.subsample,
        "colsample_bytree": boost.colsample_bytree,
        "lambda": boost.reg_lambda,
        "max_bin": boost.max_bin,
    }
    objective, _ = OBJECTIVES[cfg.data.task]
    params.update(objective)
    if objective["objective"].startswith("multi:"):
        params["num_class"] = n_outputs
    return params


def _arrays(loop: LoopConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = loop.arrays(split)
    return x.astype(np.float32), y.astype(np.float32)


@dataclass
class Stopping:
    """Early-stopping state, kept in every checkpoint so a resumed run goes on with it."""

    best_loss: float | None = None
    best_round: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def update(self, rounds: int, loss: float) -> None:
        if self.best_loss is None or loss < self.best_loss:
            self.best_loss, self.best_round = loss, rounds

    def to_json(self) -> str:
        return json.dumps(
            {"best_loss": self.best_loss, "best_round": self.best_round, "history": self.history}
        )

    @classmethod
    def from_json(cls, text: str) -> Stopping:
        state = json.loads(text)
        return cls(state["best_loss"], int(state["best_round"]), list(state["history"]))


class Reporter:
    """An XGBoost callback: early stopping on the validation loss, and every
    ``report_every`` rounds a report (metrics + checkpoint) to Ray Train."""

    def __init__(
        self, loop: LoopConfig, valid: tuple[np.ndarray, np.ndarray], stopping: Stopping
    ) -> None:
        xgb = require_xgboost()
        self.cfg, self.loop, self.valid, self.stopping = loop.cfg, loop, valid, stopping
        self.rank, _ = session.world()
        self.writer = (
            MetricsWriter(self.cfg.tracking, loop.run_id)
            if (self.rank == 0 and loop.run_id)
            else None
        )
        self.callback = type(
            "RayopsReport",
            (xgb.callback.TrainingCallback,),
            {"after_iteration": lambda _, model, epoch, log: self.after_round(model, epoch, log)},
        )()

    def after_round(self, model: Any, epoch: int, log: dict[str, Any]) -> bool:
        """True stops training."""
        rounds = epoch + 1
        boost = self.cfg.model.xgboost
        self.stopping.update(rounds, _last(log, "valid"))
        patience = boost.early_stopping_rounds
        stop = patience is not None and rounds - self.stopping.best_round >= patience
        if not stop and rounds % boost.report_every == 0 and rounds < boost.max_rounds:
            self.report(model, rounds, _last(log, "train"), _last(log, "valid"))
        return stop

    def report(
        self,
        model: Any,
        rounds: int,
        train_loss: float,
        valid_loss: float,
        extra: dict[str, float] | None = None,
    ) -> None:
        _, square = OBJECTIVES[self.cfg.data.task]
        results = self.metrics(model)
        results.update(
            epoch=rounds,
            train_loss=train_loss**square,
            valid_loss=valid_loss**square,
            **(extra or {}),
        )
        self.stopping.history.append(dict(results))
        with self._checkpoint(model, rounds) as checkpoint:
            session.report(results, checkpoint)
        if self.writer is not None:
            self.writer.put(rounds, results)
        if self.rank == 0 and self.loop.feed is not None:
            self.loop.feed.put.remote(results)

    def metrics(self, model: Any) -> dict[str, float]:
        """Exact validation metrics over every worker's shard."""
        x, y = self.valid
        task, state = self.loop.task, self.loop.label_state
        n_out = self.loop.architecture["n_outputs"]
        out = np.asarray(model.inplace_predict(x)) if len(x) else np.zeros((0, n_out))
        stats = task.sufficient_stats(out.reshape(len(x), n_out), y, state)
        return task.metrics_of(_all_reduce(stats.astype(np.float64)), state)

    def _checkpoint(self, model: Any, rounds: int) -> Any:
        return _saved(model, rounds, self.stopping) if self.rank == 0 else contextlib.nullcontext()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@contextlib.contextmanager
def _saved(model: Any, rounds: int, stopping: Stopping) -> Iterator[Checkpoint]:
    """Rank 0's checkpoint folder: the trees, the early-stopping state, the round."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder)
        model.save_model(str(path / MODEL_FILE))
        (path / HISTORY_FILE).write_text(stopping.to_json())
        # Written last, read first (as the MLP's): the round the checkpoint holds.
        (path / PROGRESS_FILE).write_text(json.dumps({"epoch": rounds}))
        yield Checkpoint.from_directory(str(path))


def _last(log: dict[str, Any], data: str) -> float:
    (values,) = log[data].values()  # one eval metric per data set
    return float(values[-1])


def _all_reduce(values: np.ndarray) -> np.ndarray:
    xgb = require_xgboost()
    if xgb.collective.get_world_size() <= 1:
        return values
    return np.asarray(xgb.collective.allreduce(values, xgb.collective.Op.SUM))


def restored(checkpoint: Checkpoint | None) -> tuple[Any, Stopping]:
    """The trees and early-stopping state of the checkpoint a restarted run continues."""
    if checkpoint is None:
        return None, Stopping()
    with checkpoint.as_directory() as folder:
        path = Path(folder) / MODEL_FILE
        booster = load_booster(path.read_bytes(), str(path))
        stopping = Stopping.from_json((Path(folder) / HISTORY_FILE).read_text())
    logger.warning("Resumed from the checkpoint of round %d", booster.num_boosted_rounds())
    return booster, stopping


def history_of(checkpoint: Checkpoint | None) -> list[dict[str, float]]:
    """Every report's metrics up to a checkpoint, oldest first."""
    if checkpoint is None:
        return []
    with checkpoint.as_directory() as folder:
        return Stopping.from_json((Path(folder) / HISTORY_FILE).read_text()).history


def xgboost_fn_per_worker(config: dict[str, Any]) -> None:
    """The XGBoost family's training loop on every worker."""
    xgb = require_xgboost()
    loop = LoopConfig.of(config)
    cfg, boost = loop.cfg, loop.cfg.model.xgboost
    train_x, train_y = _arrays(loop, "train")
    valid_x, valid_y = _arrays(loop, "valid")
    dtrain = xgb.DMatrix(train_x, label=loop.task.learned(train_y))
    dvalid = xgb.DMatrix(valid_x, label=loop.task.learned(valid_y))
    booster, stopping = restored(session.latest_checkpoint())
    reporter = Reporter(loop, (valid_x, valid_y), stopping)
    done = booster.num_boosted_rounds() if booster is not None else 0
    try:
        model = xgb.train(
            booster_params(cfg, loop.architecture["n_outputs"]),
            dtrain,
            num_boost_round=max(boost.max_rounds - done, 0),
            evals=[(dtrain, "train"), (dvalid, "valid")],
            xgb_model=booster,
            callbacks=[reporter.callback],
            verbose_eval=False,
        )
        rounds = model.num_boosted_rounds()
        best = model[: stopping.best_round] if stopping.best_round else model
        history = {d: _last_loss(best, m, d) for d, m in (("train", dtrain), ("valid", dvalid))}
        reporter.report(
            best,
            rounds,
            history["train"],
            history["valid"],
            {"kept_rounds": float(stopping.best_round or rounds)},
        )
    finally:
        reporter.close()


def _last_loss(model: Any, matrix: Any, name: str) -> float:
    """The model's eval metric on ``matrix`` (summed over workers by XGBoost)."""
    text = model.eval(matrix, name)  # "[0]\tvalid-mlogloss:0.1234"
    return float(text.rsplit(":", 1)[1])
