"""What a training loop asks of the place it runs: its rank among the workers, where its
reports and checkpoints go, and the checkpoint to continue from.

On a Ray Train worker these are Ray Train's own calls. A run of one worker may instead run
its loop in the calling process (:mod:`rayops.train.in_process`, what a sweep's trial
does): that runner installs a :class:`Session` here for the loop's duration, and the loop's
calls go to it. Ray Train's calls refuse to run inside a Ray Tune trial, so the loops call
these, never ``ray.train`` directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ray.train import Checkpoint


class Session(Protocol):
    """A loop running in this process, as its only worker."""

    use_gpu: bool

    def report(self, metrics: dict[str, Any], checkpoint: Checkpoint | None) -> None: ...

    def latest_checkpoint(self) -> Checkpoint | None: ...


_local: Session | None = None  # one loop at a time per process (a trial's own process)


@contextlib.contextmanager
def running(session: Session) -> Iterator[None]:
    """Route the loop's calls to ``session`` until the block ends."""
    global _local
    if _local is not None:
        raise RuntimeError("a training loop is already running in this process")
    _local = session
    try:
        yield
    finally:
        _local = None


def local() -> Session | None:
    """The session of a loop running in this process, or None on a Ray Train worker."""
    return _local


def world() -> tuple[int, int]:
    """(this worker's rank, how many workers)."""
    if _local is not None:
        return 0, 1
    import ray.train

    context = ray.train.get_context()
    return context.get_world_rank(), context.get_world_size()


def report(metrics: dict[str, Any], checkpoint: Checkpoint | None = None) -> None:
    """One report: metrics and, from rank 0, the checkpoint that goes with them."""
    if _local is not None:
        _local.report(metrics, checkpoint)
        return
    import ray.train

    ray.train.report(metrics, checkpoint=checkpoint)


def latest_checkpoint() -> Checkpoint | None:
    """The newest registered checkpoint of this run (a restarted run continues from it)."""
    if _local is not None:
        return _local.latest_checkpoint()
    import ray.train

    return ray.train.get_checkpoint()
