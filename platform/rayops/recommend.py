"""Recommendations from a trained recommender: the top items for a user, never one the
user has met.

A user is ranked from their interactions (their history in the curated data, and the
items of a session that came after it): :func:`recommend_frame` takes interactions (the
MLflow model's input) and answers the top ``k`` of each user.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from rayops.config import ColumnSpec
from rayops.data.interactions import ranking_examples
from rayops.data.validate import first_error, validate_frame
from rayops.errors import DataError
from rayops.predict import Predictor


def recommend_frame(predictor: Predictor, frame: pd.DataFrame) -> pd.DataFrame:
    """Per user of ``frame`` (interactions: user, item, timestamp, rating), the top items:
    one row per item, ``user, rank, item, score``."""
    pre = predictor.preprocessor
    if pre.interactions is None:
        raise DataError(f"model {predictor.bundle.meta.get('pipeline')!r} is no recommender")
    layout = pre.layout
    typed = _typed(predictor, frame)
    examples = ranking_examples(typed, layout)
    answers = pre.rules.answers(predictor.outputs(pre.transform(examples)), pre.label_state)
    out = [{layout.user: user, "rank": rank + 1, "item": entry["item"],
            "score": entry["score"]}
           for user, answer in zip(examples.column(layout.user).to_pylist(), answers,
                                   strict=True)
           for rank, entry in enumerate(answer["items"])]
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
