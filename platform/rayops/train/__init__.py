"""Training with Ray Train V2: one driver for runs and trials.

``driver.fit_and_log`` builds the model family's trainer (its loop runs on every worker:
:mod:`rayops.models.torch_loop` for the MLP), picks the best checkpoint and logs the model.
A single run and every Tune trial go through these same functions; a trial of one worker
runs the same loop in its own process (:mod:`rayops.train.in_process`).
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
    trains_in_process,
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
    "trains_in_process",
]
