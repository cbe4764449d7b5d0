"""Tasks, looked up by name: ``classification`` and ``regression`` (:mod:`.tabular`) and
``forecasting`` (:mod:`.forecasting`) and ``recommendation`` (:mod:`.recommendation`) are
rayops' own; :func:`register_task` adds another. See :class:`rayops.tasks.base.Task` for
what a task decides."""

from __future__ import annotations

from rayops.tasks.base import LOSSES, Mode, Scored, Task
from rayops.tasks.forecasting import Forecasting
from rayops.tasks.recommendation import Recommendation
from rayops.tasks.tabular import Classification, Regression

__all__ = ["LOSSES", "Mode", "Scored", "Task", "register_task", "task_names", "task_of"]

_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Make ``task`` known by its name (a name registered twice is refused)."""
    known = _TASKS.get(task.name)
    if known is not None and type(known) is not type(task):
        raise ValueError(f"task {task.name!r} is registered already ({type(known).__name__})")
    _TASKS[task.name] = task
    return task


def task_names() -> list[str]:
    return sorted(_TASKS)


def task_of(name: str) -> Task:
    """The registered task called ``name``."""
    try:
        return _TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(task_names())}") from None


register_task(Classification())
register_task(Regression())
register_task(Forecasting())
register_task(Recommendation())
