"""Training with Ray Train V2: one driver for runs and trials.

``driver.fit_and_log`` builds the model family's trainer (its loop runs on every worker:
:mod:`rayops.models.torch_loop` for the MLP), picks the best checkpoint and logs the model.
A single run and every Tune trial go through these same functions.
"""

from rayops.train.driver import (
    ModelInputs,
    TrainOutcome,
    architecture,
    build_trainer,
    fit_and_log,
    load_inputs,
    run_params,
    run_training,
)

__all__ = [
    "ModelInputs",
    "TrainOutcome",
    "architecture",
    "build_trainer",
    "fit_and_log",
    "load_inputs",
    "run_params",
    "run_training",
]
