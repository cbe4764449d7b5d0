"""The fitted transform from validated columns to the model's float matrix, and back.

Fitted from merged :mod:`rayops.data.stats` of the training split, so it scales and can be
refitted when new data arrives without re-reading old data. The fitted
:class:`Preprocessor` is plain JSON, saved with the curated dataset version and with every
model, so serving applies exactly the transform training saw; loading it unpickles nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from statistics import NormalDist
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayops.config import DataConfig
from rayops.data.interactions import InteractionLayout, inputs_of, interaction_examples
from rayops.data.series import VALIDATION_KEY, SeriesLayout, all_examples, example_dataset
from rayops.data.stats import calendar
from rayops.data.validate import ARROW_TYPES
from rayops.errors import DataError
from rayops.tasks import Task, task_of
from rayops.tasks.scoring import mean_std

OTHER = "__other__"
MAX_CATEGORIES = 64  # rarer categories share the OTHER slot: keeps the input layer small
CLIP = 1e4  # largest standardized magnitude fed to the network
QUANTILE_KNOTS = 65  # quantile scaling's resolution: steps of 1/64 of the distribution


@dataclass(frozen=True)
class Preprocessor:
    """Fitted state: how each feature becomes columns of the input matrix."""

    task: str
    label: str
    features: list[dict[str, Any]]
    label_state: dict[str, Any]
    output_columns: list[str] = field(default_factory=list)
    # Series (a forecasting dataset): how observations become examples, the transform's
    # input ({"layout": SeriesLayout as a dict, "examples": {split: about how many}}).
    series: dict[str, Any] | None = None
    # Interactions (a recommendation dataset): {"layout": InteractionLayout as a dict,
    # "examples": {split: about how many}}; examples are built from every interaction.
    interactions: dict[str, Any] | None = None

    @property
    def n_features(self) -> int:
        return len(self.output_columns)

    @property
    def built(self) -> dict[str, Any] | None:
        """How examples are built from curated rows (series, interactions), or None:
        models read the rows themselves."""
        return self.series or self.interactions

    @property
    def layout(self) -> InteractionLayout:
        """A recommendation dataset's layout."""
        assert self.interactions is not None
        return InteractionLayout.from_dict(self.interactions["layout"], self.label_state["items"])

    @property
    def rules(self) -> Task:
        """The task this preprocessing was fitted for."""
        return task_of(self.task)

    @property
    def n_outputs(self) -> int:
        return self.rules.n_outputs(self.label_state)

    @property
    def classes(self) -> list[str]:
        return list(self.label_state.get("classes", []))

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "label": self.label,
            "features": self.features,
            "label_state": self.label_state,
            "output_columns": self.output_columns,
            "series": self.series,
            "interactions": self.interactions,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> Preprocessor:
        return cls(
            task=state["task"],
            label=state["label"],
            features=list(state["features"]),
            label_state=dict(state["label_state"]),
            output_columns=list(state["output_columns"]),
            series=state.get("series"),
            interactions=state.get("interactions"),
        )

    def reads_from(self, split: str) -> str:
        """The curated split whose rows give ``split``'s examples: itself, or for series
        every observation, for interactions every interaction (they are all curated as
        'train'; the split, by time, is made here)."""
        return split if self.built is None else "train"

    def examples(self, rows: pa.Table, split: str) -> pa.Table:
        """The rows a model reads for ``split``: curated rows as they are, or for series
        the examples built from their observations (the validation period's start from
        the rows' metadata when they carry it, else this preprocessing's own), or for
        interactions the users' sequences (train) or held-out items (valid)."""
        if self.interactions is not None:
            return interaction_examples(rows, self.layout, split)
        if self.series is None:
            return rows
        layout = SeriesLayout.from_dict(self.series["layout"])
        start = (rows.schema.metadata or {}).get(VALIDATION_KEY)
        if start is not None:
            layout = replace(layout, validation_start=start.decode())
        return all_examples(rows, layout, split)

    def example_dataset(self, rows: Any, split: str) -> Any:
        """:meth:`examples` of a Ray Dataset of curated rows, built by Ray Data (for series:
        one task per group of series)."""
        if self.interactions is not None:
            raise DataError(
                "interactions are laid out in memory (each user's history "
                "whole): load_inputs reads them on the driver"
            )
        if self.series is None:
            return rows
        return example_dataset(rows, SeriesLayout.from_dict(self.series["layout"]), split)

    def transform(self, table: pa.Table) -> np.ndarray:
        """Validated feature columns -> float32 matrix (nulls imputed, unknowns to OTHER);
        for interactions, the slots of the users and items of the examples."""
        if self.interactions is not None:
            return inputs_of(table)
        work = np.zeros((table.num_rows, self.n_features), dtype=np.float64)
        everyone = np.arange(table.num_rows)
        for feat, at, codes, scales in self._plan:
            col = table.column(feat["name"])
            if codes is not None:  # one-hot; a null or an unknown category is OTHER
                index = pc.index_in(
                    pc.cast(col, pa.string()), value_set=pa.array(feat["categories"], pa.string())
                )
                work[
                    everyone,
                    at
                    + index.fill_null(len(codes)).to_numpy(zero_copy_only=False).astype(np.int64),
                ] = 1.0
            elif feat["kind"] == "datetime":
                for i, (part, scale) in enumerate(zip(feat["parts"], scales, strict=True)):
                    work[:, at + i] = scale(_floats(calendar(col, part["part"])))
            else:
                raw = _floats(pc.cast(col, pa.float64()))
                for i, scale in enumerate(scales):
                    work[:, at + i] = scale(raw)
                if feat.get("missing"):
                    work[:, at + len(scales)] = col.is_null().to_numpy(zero_copy_only=False)
        return _finish(work)

    def transform_rows(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """:meth:`transform` for a few records whose values are already typed and valid
        (a request's records after its schema check: numbers, known categories, datetimes,
        None where nullable): plain Python and numpy, no Arrow, for the small-request path.
        Gives the same matrix as ``transform(validate_records(rows, ...))``."""
        work = np.zeros((len(rows), self.n_features), dtype=np.float64)
        everyone = np.arange(len(rows))
        for feat, at, codes, scales in self._plan:
            values = [row.get(feat["name"]) for row in rows]
            if codes is not None:  # one-hot; a null or an unknown category is OTHER
                other = len(codes)
                work[
                    everyone,
                    at
                    + np.array(
                        [codes.get(v, other) for v in values],  # type: ignore[arg-type]
                        dtype=np.int64,
                    ),
                ] = 1.0
            elif feat["kind"] == "datetime":
                stamps = pa.chunked_array(
                    [pa.array([_utc(v) for v in values], ARROW_TYPES["datetime"])]
                )
                for i, (part, scale) in enumerate(zip(feat["parts"], scales, strict=True)):
                    work[:, at + i] = scale(_floats(calendar(stamps, part["part"])))
            else:
                raw = np.array(
                    [np.nan if v is None else float(v) for v in values], dtype=np.float64
                )
                for i, scale in enumerate(scales):
                    work[:, at + i] = scale(raw)
                if feat.get("missing"):
                    work[:, at + len(scales)] = [v is None for v in values]
        return _finish(work)

    @cached_property
    def _plan(self) -> list[tuple[dict[str, Any], int, dict[str, int] | None, list[Any]]]:
        """Per feature, for both transforms: its first output column, its one-hot
        codes (category -> offset) or the scalings of its columns (raw float64 -> scaled,
        before the clip that :func:`_finish` applies to all)."""
        plan: list[tuple[dict[str, Any], int, dict[str, int] | None, list[Any]]] = []
        at = 0
        for feat in self.features:
            if feat["kind"] in ("categorical", "text"):
                codes = {c: i for i, c in enumerate(feat["categories"])}
                plan.append((feat, at, codes, []))
                at += len(codes) + 1
            elif feat["kind"] == "datetime":
                plan.append((feat, at, None, [_scaling(p) for p in feat["parts"]]))
                at += len(feat["parts"])
            else:
                scales = [_scaling(feat)]
                if feat.get("also_standard"):
                    scales.append(_scaling({"mean": feat["mean"], "std": feat["std"]}))
                plan.append((feat, at, None, scales))
                at += len(scales) + bool(feat.get("missing"))
        return plan

    def encode_label(self, labels: pa.ChunkedArray) -> np.ndarray:
        """Labels as the model learns them (the task's encoding: a class index, -1 for a
        class unseen in training; or the standardized target)."""
        return self.rules.encode_label(self.label_state, labels)

    def targets(self, table: pa.Table) -> np.ndarray:
        """What the loops and metrics read of labelled rows (:meth:`Task.targets`)."""
        return self.rules.targets(self.label_state, table, self.label)


def _floats(values: pa.ChunkedArray) -> np.ndarray:
    """A float64 column as numpy (NaN for null)."""
    return values.to_numpy(zero_copy_only=False).astype(np.float64)


def _scaling(state: Mapping[str, Any]) -> Any:
    """float64 values (NaN for null) -> scaled float64 values (NaN stays NaN)."""
    if "knots" in state:  # quantile scaling; a value outside the training range takes the end
        knots, scores = np.asarray(state["knots"]), np.asarray(state["scores"])
        return lambda raw: np.interp(raw, knots, scores)
    mean, std = state["mean"], state["std"]
    return lambda raw: (raw - mean) / std


def _finish(scaled: np.ndarray) -> np.ndarray:
    """Nulls become the median (quantile scaling) or the mean (standard): both 0. A value
    10,000 spreads out is an outlier the model cannot use anyway; clipping keeps float32
    and the network's outputs finite."""
    scaled[np.isnan(scaled)] = 0.0
    return np.clip(scaled, -CLIP, CLIP).astype(np.float32)


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """A datetime as validation stores it: naive ones are UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)


def _scale_state(stats: Mapping[str, Any], key: str) -> dict[str, float]:
    mean, std = mean_std(stats.get(key, {}))
    return {"mean": mean, "std": std}


def quantile_state(entry: Mapping[str, Any], knots: int = QUANTILE_KNOTS) -> dict[str, list[float]]:
    """Knots mapping a column's training distribution (its weighted sample in the merged
    statistics) onto standard-normal scores; empty when the column barely varies. Tied
    knots (a column with few distinct values) share the mean of their scores."""
    sample = np.asarray(entry.get("sample", []), dtype=np.float64)
    weight = np.asarray(entry.get("weight", []), dtype=np.float64)
    if sample.size < 2:
        return {}
    order = np.argsort(sample, kind="stable")
    sample, weight = sample[order], weight[order]
    rank = (np.cumsum(weight) - 0.5 * weight) / weight.sum()  # mid-rank probabilities
    levels = np.linspace(0.0, 1.0, knots)
    where = np.interp(levels, rank, sample)
    normal = NormalDist()
    scores = np.array([normal.inv_cdf(p) for p in np.clip(levels, 1e-3, 1 - 1e-3)])
    unique, inverse = np.unique(where, return_inverse=True)
    if unique.size < 2:
        return {}
    shared = np.bincount(inverse, weights=scores) / np.bincount(inverse)
    return {"knots": unique.tolist(), "scores": shared.tolist()}


def _numeric_state(
    stats: Mapping[str, Any], name: str, kind: str, data: DataConfig
) -> dict[str, Any]:
    entry = stats.get(name, {})
    state: dict[str, Any] = {"name": name, "kind": kind, **_scale_state(stats, name)}
    if kind != "boolean" and data.scaling in ("quantile", "both"):
        state.update(quantile_state(entry))
        state["also_standard"] = data.scaling == "both" and "knots" in state
    if data.null_strategy == "impute" and entry.get("rows", 0) > entry.get("n", 0):
        state["missing"] = True  # nulls in training: the model sees where they were
    return state


def fit(stats: Mapping[str, Any], data: DataConfig) -> Preprocessor:
    """Build the :class:`Preprocessor` from merged training-split statistics."""
    label_entry = stats.get(data.label, {})
    if not label_entry.get("n"):
        raise DataError("no valid training rows to fit the preprocessing on")
    features: list[dict[str, Any]] = []
    output: list[str] = []
    for name in data.feature_names:
        spec = data.columns[name]
        if spec.type in ("categorical", "text"):
            counts = stats.get(name, {}).get("counts", {})
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            cats = sorted(k for k, _ in ranked[:MAX_CATEGORIES])
            features.append({"name": name, "kind": spec.type, "categories": cats})
            output += [f"{name}={c}" for c in cats] + [f"{name}={OTHER}"]
        elif spec.type == "datetime":
            parts = [{"part": p, **_scale_state(stats, f"{name}.{p}")} for p in spec.parts]
            features.append({"name": name, "kind": "datetime", "parts": parts})
            output += [f"{name}.{p}" for p in spec.parts]
        else:
            features.append(_numeric_state(stats, name, spec.type, data))
            state = features[-1]
            output += [
                name,
                *([f"{name}.z"] if state.get("also_standard") else []),
                *([f"{name}.missing"] if state.get("missing") else []),
            ]
    label_state = task_of(data.task).fit_label(data.label, label_entry)
    return Preprocessor(data.task, data.label, features, label_state, output)
