"""The recommendation task: rank the whole catalogue for a user, answer the top k.

A recommender learns from interactions (a user, an item, when, perhaps a rating), laid out
by :mod:`rayops.data.interactions`: each user's last positive is held out for validation
(leave-last-out by time), the rest is training. A model scores every item for a user and
answers the best ``k`` it has not seen in training (:meth:`Model.outputs` gives the top-k
item slots, then their scores). Every validation row carries the held-out item's slot and
its rank under the popularity baseline (the most interacted items first), so the baseline
is always scored beside the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayops.tasks.base import LOSSES, Mode, Scored, Task

# The columns a validation example carries beside its inputs (never model inputs).
TARGET, POPULARITY_RANK = "_target", "_popularity_rank"
_STATS = ("n", "hits", "ndcg", "pop_hits", "pop_ndcg")


def metric_names(k: int) -> dict[str, Mode]:
    return {
        f"valid_ndcg_{k}": "max",
        f"valid_recall_{k}": "max",
        f"valid_popularity_ndcg_{k}": "max",
        f"valid_popularity_recall_{k}": "max",
        **LOSSES,
    }


def ranking_sums(top: np.ndarray, encoded: np.ndarray, k: int) -> np.ndarray:
    """Per :data:`_STATS`: rows, hits and NDCG of the model's top ``k`` item slots (one
    held-out item per row: recall is the hit rate, NDCG 1/log2(position + 2)) and of the
    popularity baseline (its rank of the held-out item)."""
    encoded = encoded.reshape(-1, 2)
    top = top.reshape(len(encoded), -1)[:, :k].astype(np.int64)
    target = encoded[:, 0].astype(np.int64)
    found = top == target[:, None]
    position = found.argmax(axis=1)
    hit = found.any(axis=1)
    pop_rank = encoded[:, 1]
    pop_hit = pop_rank < k
    return np.array(
        [
            len(encoded),
            hit.sum(),
            (hit / np.log2(position + 2.0)).sum(),
            pop_hit.sum(),
            (pop_hit / np.log2(np.where(pop_hit, pop_rank, 0) + 2.0)).sum(),
        ],
        dtype=np.float64,
    )


def ranking_metrics(sums: np.ndarray, k: int) -> dict[str, float]:
    s = dict(zip(_STATS, (float(v) for v in sums), strict=True))
    n = s["n"] or float("nan")
    return {
        f"valid_recall_{k}": s["hits"] / n,
        f"valid_ndcg_{k}": s["ndcg"] / n,
        f"valid_popularity_recall_{k}": s["pop_hits"] / n,
        f"valid_popularity_ndcg_{k}": s["pop_ndcg"] / n,
    }


class Recommendation(Task):
    """The top ``k`` items of the catalogue for a user, never one the user has seen."""

    name = "recommendation"
    metrics = metric_names(10)  # for k = 10; metrics_for names them after data.recommend.k
    default_metric = "valid_ndcg_10"
    shown_metric = "valid_recall_10"
    label_types = ("categorical", "text", "integer")
    label_kinds = "categorical, text or integer (item id)"
    categorical_label = True  # served items are profiled as categories: popularity shift
    probabilities = False
    feedback_label = str | int  # the item the user clicked
    route = "/recommend"
    default_family = "sasrec"
    scores_served_records = False  # a served list is judged by the next click, later

    def metrics_for(self, data: Any) -> Mapping[str, Mode]:
        return metric_names(data.recommend.k) if data.recommend is not None else self.metrics

    def default_metric_for(self, data: Any) -> str:
        return f"valid_ndcg_{data.recommend.k}" if data.recommend else self.default_metric

    def shown_metric_for(self, data: Any) -> str:
        return f"valid_recall_{data.recommend.k}" if data.recommend else self.shown_metric

    def unmonitored(self, data: Any) -> set[str]:
        """All but the items answered: new times and users are expected, and a request
        carries no rating. The answered items, compared with the training items, show a
        shift in popularity."""
        r = data.recommend
        return {r.timestamp, r.user, *([r.rating] if r.rating else [])}

    def served_records(self, records: Any) -> Any:
        """One row per answered item (its place in the answer kept in ``rank``)."""
        exploded = records.explode("prediction", ignore_index=True)
        exploded["rank"] = (
            exploded.groupby(["request_id", "record_index"]).cumcount() + 1
            if "request_id" in exploded
            else 0
        )
        return exploded[exploded["prediction"].notna()].reset_index(drop=True)

    def data_error(self, data: Any) -> str | None:
        r = data.recommend
        if r is None:
            return (
                "data.task 'recommendation' needs a data.recommend section (at least "
                "user, item and timestamp columns)"
            )
        roles = {"user": r.user, "item": r.item, "timestamp": r.timestamp}
        if r.rating is not None:
            roles["rating"] = r.rating
        if r.item != data.label:
            return (
                f"data.label {data.label!r} must be data.recommend.item {r.item!r} (a "
                "recommender predicts the item; leave data.label out)"
            )
        types = {
            "user": ("categorical", "text", "integer"),
            "item": self.label_types,
            "timestamp": ("datetime",),
            "rating": ("numeric", "integer"),
        }
        for key, name in roles.items():
            spec = data.columns.get(name)
            if spec is None:
                return (
                    f"data.recommend.{key} {name!r} is not a declared column; declared: "
                    f"{sorted(data.columns)}"
                )
            if spec.type not in types[key] or (key != "rating" and spec.nullable):
                return (
                    f"data.recommend.{key} {name!r} must be declared "
                    f"{' or '.join(types[key])}"
                    + (" with nullable: false" if key != "rating" else "")
                    + f" (it is {spec.type}, nullable: {str(spec.nullable).lower()})"
                )
        if len(set(roles.values())) < len(roles):
            return f"a column has two roles in data.recommend: {roles}"
        other = sorted(set(data.feature_names) - set(roles.values()))
        if other:
            return (
                f"column(s) {other} are not data.recommend.user, timestamp or rating: "
                "an interaction's other columns are not read; list them under "
                "data.exclude"
            )
        return None

    # ---------------------------------------------------------------- labels

    def fit_label(self, label: str, entry: Mapping[str, Any]) -> dict[str, Any]:
        return {}  # the catalogue is fitted with the interactions' layout

    def encode_label(self, state: Mapping[str, Any], labels: pa.ChunkedArray) -> np.ndarray:
        return pc.cast(labels, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float32)

    def targets(self, state: Mapping[str, Any], table: pa.Table, label: str) -> np.ndarray:
        """``[held-out item slot, its popularity rank]`` per validation example (-1 where
        a training example has none)."""
        if TARGET not in table.column_names:
            return np.full((table.num_rows, 2), -1.0, dtype=np.float32)
        return np.stack(
            [self.encode_label(state, table.column(c)) for c in (TARGET, POPULARITY_RANK)], axis=1
        ).reshape(-1, 2)

    def n_outputs(self, state: Mapping[str, Any]) -> int:
        return 2 * int(state["k"])  # the top k item slots, then their scores

    # ---------------------------------------------------------------- metrics

    def sufficient_stats(
        self, outputs: np.ndarray, encoded: np.ndarray, state: Mapping[str, Any]
    ) -> np.ndarray:
        return ranking_sums(outputs, encoded, int(state["k"]))

    def metrics_of(self, stats: np.ndarray, state: Mapping[str, Any]) -> dict[str, float]:
        return ranking_metrics(stats, int(state["k"]))

    def score(
        self,
        outputs: np.ndarray,
        encoded: np.ndarray,
        state: Mapping[str, Any],
        classes: list[str] | None = None,
    ) -> Scored:
        metrics = ranking_metrics(self.sufficient_stats(outputs, encoded, state), int(state["k"]))
        empty = np.zeros(0)
        return Scored(metrics, empty, empty, [])

    # ---------------------------------------------------------------- serving

    def answers(self, outputs: np.ndarray, state: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Per user, the top items (ids as strings) with their scores."""
        items, k = state["items"], int(state["k"])
        answers = []
        for row in outputs.reshape(len(outputs), -1):
            slots, scores = row[:k].astype(np.int64), row[k : 2 * k]
            answers.append(
                {
                    "items": [
                        {"item": items[s - 1], "score": round(float(v), 6)}
                        for s, v in zip(slots, scores, strict=True)
                        if 0 < s <= len(items) and np.isfinite(v)
                    ]
                }
            )
        return answers

    def true_label(self, value: Any) -> Any:
        return str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None

    def live_metrics(
        self, predicted: list[Any], actual: list[Any], declared: list[str] | None
    ) -> dict[str, float]:
        """The share of clicks that were on an item the answer listed."""
        hits = [
            str(a) in {str(i) for i in (p or [])} for p, a in zip(predicted, actual, strict=True)
        ]
        return {"live_hit_rate": float(np.mean(hits)) if hits else float("nan")}

    def agree(self, shadow: Any, champion: Any, tolerance: float) -> bool:
        """Two answers agree when their lists overlap by at least 1 - tolerance."""
        mine, theirs = set(map(str, shadow or [])), set(map(str, champion or []))
        union = mine | theirs
        return not union or len(mine & theirs) / len(union) >= 1 - tolerance

    # ---------------------------------------------------------------- PyTorch

    def torch_loss(self) -> Any:
        return None  # a recommender's network computes its own loss (see models.recommend)

    def torch_label_dtype(self) -> Any:
        import torch

        return torch.float32
