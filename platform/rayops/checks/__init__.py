"""Declared checks of a model before it ships (``checks:`` in the config): behavioural
tests, slice floors and data thresholds, run by ``rayops check`` and by the gate."""

from rayops.checks.results import CheckReport, CheckResult
from rayops.checks.run import JUNIT, MARKDOWN, failed_reason, record, run_checks

__all__ = [
    "JUNIT",
    "MARKDOWN",
    "CheckReport",
    "CheckResult",
    "failed_reason",
    "record",
    "run_checks",
]
