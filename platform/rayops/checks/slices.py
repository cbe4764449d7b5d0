"""Slice checks: a metric on each value of a column (or each quantile bin of a numeric
one) of the validation rows, each with a floor (absolute, or relative to the whole) and a
maximum regression against the champion on the same slice. A slice with fewer rows than
``min_rows`` is shown, not judged (its metric is noise)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayops.checks.results import CheckResult
from rayops.config.checks import SliceCheck
from rayops.evaluate import score
from rayops.predict import Predictor

NULL = "(null)"


def slices(rows: pa.Table, check: SliceCheck) -> Iterator[tuple[str, pa.Table]]:
    """(name, rows) of each slice: a value of a text column, a quantile bin of a numeric
    one (``[lo, hi)``, the last closed), and the rows where it is null."""
    column = rows.column(check.column)
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        values = column.to_numpy(zero_copy_only=False).astype(float)
        known = values[~np.isnan(values)]
        edges = (
            np.unique(np.quantile(known, np.linspace(0, 1, check.bins + 1)))
            if known.size
            else np.array([])
        )
        for i in range(len(edges) - 1):
            last = i == len(edges) - 2
            inside = (values >= edges[i]) & (
                (values <= edges[i + 1]) if last else (values < edges[i + 1])
            )
            yield (
                f"[{edges[i]:g}, {edges[i + 1]:g}{']' if last else ')'}",
                rows.filter(pa.array(inside)),
            )
        nulls = np.isnan(values)
    else:
        text = pc.cast(column, pa.string())
        for value in sorted(v for v in pc.unique(text).to_pylist() if v is not None):
            yield value, rows.filter(pc.fill_null(pc.equal(text, value), False))
        nulls = pc.is_null(text).to_numpy(zero_copy_only=False)
    if nulls.any():
        yield NULL, rows.filter(pa.array(nulls))


def slice_check(
    predictor: Predictor,
    champion: Predictor | None,
    check: SliceCheck,
    rows: pa.Table,
    metric: str,
    mode: str,
    examples: int,
) -> CheckResult:
    """Every slice judged against the floors (and the champion, when given)."""
    whole = score(predictor, rows).metrics[metric]
    worse = (lambda a, b: a < b) if mode == "max" else (lambda a, b: a > b)
    floors = []
    if check.floor is not None:
        floors.append(check.floor)
    if check.relative_floor is not None:
        floors.append(
            whole * check.relative_floor if mode == "max" else whole / check.relative_floor
        )
    floor = (max(floors) if mode == "max" else min(floors)) if floors else None
    shown: list[str] = []
    failing: list[dict[str, Any]] = []
    for name, part in slices(rows, check):
        if part.num_rows < check.min_rows:
            shown.append(f"{name} n={part.num_rows} (too few to judge)")
            continue
        value = score(predictor, part).metrics[metric]
        why = []
        if floor is not None and worse(value, floor):
            why.append(
                f"below the floor {floor:.4f}"
                if mode == "max"
                else f"above the ceiling {floor:.4f}"
            )
        if champion is not None and check.max_regression is not None:
            theirs = score(champion, part).metrics[metric]
            loss = (theirs - value) if mode == "max" else (value - theirs)
            if loss > check.max_regression:
                why.append(f"{loss:.4f} worse than the champion's {theirs:.4f}")
        shown.append(f"{name} {value:.4f}")
        if why:
            failing.append(
                {
                    "slice": f"{check.column}={name}",
                    "rows": part.num_rows,
                    metric: round(value, 4),
                    "why": "; ".join(why),
                }
            )
    detail = (
        f"whole {whole:.4f}"
        + ("" if floor is None else f", {'floor' if mode == 'max' else 'ceiling'} {floor:.4f}")
        + f"; {', '.join(shown)}"
        + (f"; failing: {', '.join(f['slice'] for f in failing)}" if failing else "")
    )
    return CheckResult(
        "slices", f"{metric} by {check.column}", not failing, detail, failing[:examples]
    )
