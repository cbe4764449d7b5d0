"""Ray Data settings for rayops' own pipelines, applied where a dataset is created.

A Dataset copies the current DataContext when it is built, so these settings reach only the
datasets rayops builds inside :func:`data_context`, never the caller's own.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray.data

# Measured on 2 CPUs (tests/benchmarks/bench_etl.py and a 4 x 1 s CPU-bound probe):
# - the per-operator resource reservation let a single fused read->validate->write operator
#   run about one task at a time (4 x 1 s tasks took 3.2 s; 2.1 s without it);
# - the V2 Parquet reader took 15 s for 1M curated rows in 60 small files, the classic one
#   0.7 s.
RAYOPS_SETTINGS: dict[str, Any] = {
    "op_resource_reservation_enabled": False,
    "use_datasource_v2": False,
}


@contextmanager
def data_context(preserve_order: bool = False, **overrides: Any) -> Iterator[ray.data.DataContext]:
    """Temporarily apply :data:`RAYOPS_SETTINGS` (and ``overrides``) to the current context.
    ``preserve_order`` keeps blocks in input order (a seeded run then sees the same data
    order every time)."""
    context = ray.data.DataContext.get_current()
    wanted = {**RAYOPS_SETTINGS, **overrides}
    if preserve_order:
        options = copy.copy(context.execution_options)
        options.preserve_order = True
        wanted["execution_options"] = options
    before = {key: getattr(context, key) for key in wanted}
    for key, value in wanted.items():
        setattr(context, key, value)
    try:
        yield context
    finally:
        for key, value in before.items():
            setattr(context, key, value)
