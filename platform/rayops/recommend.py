"""Recommendations from a trained recommender: the top items for a user, never one the
user has met.

A user is ranked from their interactions: their history in the curated data, then the
items of a session that came after it (``recent_items``, positives in that order). A user
the model cannot rank (none of either, or unknown to a model that reads the user's id)
gets the most popular items instead, marked as a fallback. :func:`recommend_frame` takes
interactions (the MLflow model's input) and answers the top ``k`` of each user.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rayops.config import ColumnSpec
from rayops.data.interactions import USER, InteractionLayout, ranking_examples
from rayops.data.validate import first_error, validate_frame, validate_records
from rayops.errors import DataError
from rayops.predict import Predictor


def layout_of(predictor: Predictor) -> InteractionLayout:
    """The layout a recommender was trained with (a DataError for another model)."""
    if predictor.preprocessor.interactions is None:
        raise DataError(f"this is a {predictor.task} model: it does not recommend")
    return predictor.preprocessor.layout


def id_value(predictor: Predictor, column: str, value: str, where: str) -> Any:
    """An id from a request (a string in JSON) as ``column`` holds it."""
    if predictor.schema[column].type != "integer":
        return value
    try:
        return int(value)
    except ValueError:
        raise DataError(
            f"{where}: {value!r} is not an id of this model's {column} (integers)"
        ) from None


@dataclass(frozen=True)
class Prepared:
    """One request, ready for the model: its input row, or None for the fallback."""

    user: str
    k: int
    row: np.ndarray | None
    seen: frozenset[str]  # the items the user has met: never answered


def prepare(
    predictor: Predictor, user: str, curated: pa.Table | None, recent_items: Sequence[str], k: int
) -> Prepared:
    """A request for ``user``'s top ``k``: ``curated`` holds the user's interactions in the
    data (None or empty: none), ``recent_items`` those of the session since."""
    layout = layout_of(predictor)
    rows = _interactions(predictor, layout, user, curated, recent_items)
    seen = frozenset(str(i) for i in rows.column(layout.item).to_pylist())
    examples = ranking_examples(rows, layout) if rows.num_rows else None
    known = examples is not None and (
        examples.column(USER)[0].as_py() > 0 or not _reads_user(predictor)
    )
    row = predictor.preprocessor.transform(examples)[0] if known and examples is not None else None
    return Prepared(user, k, row, seen)


def _reads_user(predictor: Predictor) -> bool:
    return bool(getattr(predictor.bundle.model, "reads_user", False))


def _interactions(
    predictor: Predictor,
    layout: InteractionLayout,
    user: str,
    curated: pa.Table | None,
    recent: Sequence[str],
) -> pa.Table:
    """The user's curated interactions, then the recent items one microsecond apart after
    them (and after now), typed by the model's column contract."""
    columns = [c for c in (layout.user, layout.item, layout.timestamp, layout.rating) if c]
    specs = {c: predictor.schema[c] for c in columns}
    parts = [curated.select(columns)] if curated is not None and curated.num_rows else []
    start = dt.datetime.now(dt.UTC)
    if parts:
        start = max(start, pc.max(parts[0].column(layout.timestamp)).as_py())
    records = [
        {
            layout.user: id_value(predictor, layout.user, user, "user"),
            layout.item: id_value(predictor, layout.item, item, f"recent_items[{i}]"),
            layout.timestamp: (start + dt.timedelta(microseconds=i + 1)).isoformat(),
        }
        for i, item in enumerate(recent)
    ]
    typed = validate_records(records, specs)
    bad = first_error(typed)
    if bad is not None:
        raise DataError(f"recent_items[{bad[0]}]: {bad[1]}")
    parts.append(typed.select(columns))
    return pa.concat_tables(parts)


def answer(predictor: Predictor, requests: Sequence[Prepared]) -> list[dict[str, Any]]:
    """The answers to prepared requests, from one model call for all (a replica's batch):
    ``{"items": [{"item", "score"}...], "fallback"}`` per request."""
    pre, layout = predictor.preprocessor, layout_of(predictor)
    ranked = [r for r in requests if r.row is not None]
    found: dict[int, dict[str, Any]] = {}
    if ranked:
        width = max(len(r.row) for r in ranked)  # type: ignore[arg-type]
        x = np.zeros((len(ranked), width), dtype=np.float32)
        for i, r in enumerate(ranked):
            x[i, : len(r.row)] = r.row  # type: ignore[arg-type]
        k = max(r.k for r in ranked)
        outputs = predictor.bundle.model.top(x, k)  # type: ignore[attr-defined]
        answers = pre.rules.answers(outputs, {**pre.label_state, "k": k})
        for r, a in zip(ranked, answers, strict=True):
            found[id(r)] = {"items": a["items"][: r.k], "fallback": False}
    return [found.get(id(r)) or popular(layout, r) for r in requests]


def popular(layout: InteractionLayout, request: Prepared) -> dict[str, Any]:
    """The most popular items the user has not met, scored by their share of positives."""
    total = sum(count for _, count in layout.popular) or 1
    items = [
        {"item": item, "score": round(count / total, 6)}
        for item, count in layout.popular
        if item not in request.seen
    ]
    return {"items": items[: request.k], "fallback": True}


def recommend_frame(predictor: Predictor, frame: pd.DataFrame) -> pd.DataFrame:
    """Per user of ``frame`` (interactions: user, item, timestamp, rating), the top items:
    one row per item, ``user, rank, item, score``."""
    layout = layout_of(predictor)
    typed = _typed(predictor, frame)
    examples = ranking_examples(typed, layout)
    pre = predictor.preprocessor
    answers = pre.rules.answers(predictor.outputs(pre.transform(examples)), pre.label_state)
    out = [
        {layout.user: user, "rank": rank + 1, "item": entry["item"], "score": entry["score"]}
        for user, answer in zip(examples.column(layout.user).to_pylist(), answers, strict=True)
        for rank, entry in enumerate(answer["items"])
    ]
    return pd.DataFrame(out, columns=[layout.user, "rank", "item", "score"])


def _typed(predictor: Predictor, frame: pd.DataFrame) -> pa.Table:
    """The interactions checked against the model's column contract (a DataError names
    the first bad one)."""
    specs = {n: ColumnSpec.model_validate(s) for n, s in predictor.bundle.meta["schema"].items()}
    missing = [n for n, s in specs.items() if n not in frame.columns and not s.nullable]
    if missing:
        raise DataError(f"interactions lack the column(s) {missing}")
    typed = validate_frame(frame[[n for n in specs if n in frame.columns]], specs)
    bad = first_error(typed)
    if bad is not None:
        raise DataError(f"interaction {bad[0]}: {bad[1]}")
    return typed
