"""Progress lines while a run trains, on the console of the process that started it.

Rank 0 posts each epoch's metrics to a small mailbox actor without waiting for an answer;
a thread on the driver takes them and prints one line per epoch. Only when someone reads
the lines (the ``rayops`` logger is at INFO, as the CLI sets it): library calls and tests
start no mailbox.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rayops.config import PipelineConfig
from rayops.families import family_named
from rayops.tasks import task_of

logger = logging.getLogger(__name__)


class _Mailbox:
    """Lives in its own actor: epochs in, batches out."""

    def __init__(self) -> None:
        self._items: list[dict[str, float]] = []

    def put(self, item: dict[str, float]) -> None:
        self._items.append(item)

    def take(self) -> list[dict[str, float]]:
        items, self._items = self._items, []
        return items


def console_enabled() -> bool:
    """Whether this process shows rayops' progress: the CLI set up a console for it
    (``runtime.setup_logging``); library calls, tests and Ray workers did not."""
    ours = logging.getLogger("rayops")
    return bool(ours.handlers) and ours.isEnabledFor(logging.INFO)


def epoch_line(cfg: PipelineConfig, metrics: dict[str, float]) -> str:
    """``epoch 3/8  loss 0.412 / 0.398  valid_f1 0.662  valid_accuracy 0.781  1.3 s``."""
    metric, _ = cfg.target_metric
    task, family = task_of(cfg.data.task), family_named(cfg.model.family)
    shown = [
        m for m in dict.fromkeys([metric, task.shown_metric_for(cfg.data)]) if m in cfg.metrics
    ]
    scores = "  ".join(f"{m} {metrics[m]:.4f}" for m in shown if m in metrics)
    return (
        f"{family.step} {int(metrics['epoch'])}/{family.length(cfg)}  loss "
        f"{metrics.get('train_loss', float('nan')):.4f} / "
        f"{metrics.get('valid_loss', float('nan')):.4f}  {scores}  "
        f"{metrics.get('epoch_time_s', 0.0):.1f} s"
    )


@contextmanager
def epoch_feed(cfg: PipelineConfig) -> Iterator[Any]:
    """The mailbox handle to give rank 0 (None when nobody reads the lines), printing what
    arrives until the block ends."""
    if not console_enabled():
        yield None
        return
    import ray

    mailbox = ray.remote(num_cpus=0)(_Mailbox).remote()
    done = threading.Event()

    def show() -> None:
        for item in ray.get(mailbox.take.remote(), timeout=30):  # type: ignore[attr-defined]
            logger.info(epoch_line(cfg, item))

    def pump() -> None:
        while not done.wait(0.5):
            try:
                show()
            except Exception:  # progress lines must never fail a run
                return

    thread = threading.Thread(target=pump, name="rayops-epochs", daemon=True)
    thread.start()
    try:
        yield mailbox
    finally:
        done.set()
        thread.join(timeout=5)
        try:
            show()
        finally:
            ray.kill(mailbox)  # type: ignore[arg-type]
