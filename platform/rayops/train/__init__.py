"""Training with Ray Train V2: one loop on every worker, one driver for runs and trials.

``loop.train_fn_per_worker`` runs on each DDP worker; ``driver.fit_and_log`` builds the
TorchTrainer, picks the best checkpoint and logs the model. A single run and every Tune trial
go through these same two functions.
"""

from rayops.train.driver import (
    TrainOutcome,
    architecture,
    build_trainer,
    fit_and_log,
    load_datasets,
    run_params,
    run_training,
)
from rayops.train.loop import train_fn_per_worker

__all__ = [
    "TrainOutcome",
    "architecture",
    "build_trainer",
    "fit_and_log",
    "load_datasets",
    "run_params",
    "run_training",
    "train_fn_per_worker",
]
