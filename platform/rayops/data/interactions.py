"""Interactions of users with items, laid out for a recommender.

The layout (:class:`InteractionLayout`) is fitted at ingest on every curated interaction
and saved in the version's manifest, like a tabular dataset's preprocessing: the catalogue
(every item seen, slot 1..n; slot 0 pads a sequence) and the users (slot 1..m; 0: unknown).

Examples are built from interactions by :func:`interaction_examples`, the same way for
training, the gate and evaluation (each model with its own layout):

- each user's interactions in time order, an item the user met before dropped (a re-watch
  is not news); a positive is an interaction rated at least ``min_rating`` (every one
  without ratings);
- a user with at least ``min_interactions`` positives has the last one held out for
  validation; what came later is left out (it happened after it); the rest is training;
- training examples: each user's positives as sequences of ``history + 1`` slots (the
  latest first, left-padded), consecutive windows sharing one item, so each step from an
  item to the next is learned once;
- validation examples: the user, the last ``history`` training positives, every item met
  in training (a model never ranks them), the held-out item's slot (-1 when the layout
  does not know it: a miss) and its rank under the popularity baseline.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayops.errors import DataError
from rayops.tasks.recommendation import POPULARITY_RANK, TARGET

USER, SEQUENCE, HISTORY, SEEN = "_user", "_sequence", "_history", "_seen"
POPULAR = 1000  # the popular items kept for users a model cannot rank (the fallback)


@dataclass(frozen=True)
class InteractionLayout:
    """The columns' roles and the catalogue a model ranks."""

    user: str
    item: str
    timestamp: str
    rating: str | None
    min_rating: float | None
    k: int
    history: int
    min_interactions: int
    users: list[str]  # slot i + 1 is users[i]
    popular: list[list[Any]]  # [item, positives] of the most popular items, most first
    items: list[str]  # slot i + 1 is items[i]

    def to_dict(self) -> dict[str, Any]:
        """Without the catalogue: the fitted label holds it (a model's answers name it)."""
        return {k: v for k, v in asdict(self).items() if k != "items"}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any], items: list[str]) -> InteractionLayout:
        return cls(**state, items=list(items))

    @classmethod
    def fit(cls, rows: pa.Table, data: Any) -> InteractionLayout:
        """The layout of ``data.recommend`` over every curated interaction in ``rows``."""
        return fit_interaction_layout(rows, data)[0]

    def slots(self, values: pa.ChunkedArray, known: list[str]) -> np.ndarray:
        """1-based slots of ``values`` in ``known``; 0 for a value it does not hold."""
        index = pc.index_in(pc.cast(values, pa.string()), value_set=pa.array(known, pa.string()))
        return index.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64) + 1


def _ids(column: pa.ChunkedArray) -> list[str]:
    return pc.cast(column, pa.string()).to_pylist()


@dataclass(frozen=True)
class _Histories:
    """Each user's deduplicated interactions in time order, as slots, split."""

    user: list[int]  # the user's slot
    train: list[np.ndarray]  # item slots met in training, in time order (0: unknown)
    positive: list[np.ndarray]  # which of them are positives
    held_out: list[int | None]  # the held-out item's slot (0: unknown), or None
    ids: list[str]  # the user's id


def _histories(rows: pa.Table, layout: InteractionLayout, hold_out: bool = True) -> _Histories:
    users = pc.cast(rows.column(layout.user), pa.string())
    codes = pc.dictionary_encode(users).combine_chunks().indices.to_numpy()
    times = pc.cast(rows.column(layout.timestamp), pa.int64()).to_numpy(zero_copy_only=False)
    items = layout.slots(rows.column(layout.item), layout.items)
    item_ids = pc.cast(rows.column(layout.item), pa.string()).to_numpy(zero_copy_only=False)
    positive = np.ones(rows.num_rows, dtype=bool)
    if layout.rating is not None and layout.min_rating is not None:
        ratings = pc.cast(rows.column(layout.rating), pa.float64()).to_numpy(
            zero_copy_only=False
        )  # no rating (a click, a session's item): a positive
        positive = np.isnan(ratings) | (np.nan_to_num(ratings) >= layout.min_rating)
    user_slots = layout.slots(users, layout.users)
    user_ids = users.to_numpy(zero_copy_only=False)
    order = np.lexsort((np.arange(rows.num_rows), times, codes))
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    out = _Histories([], [], [], [], [])
    for group_all in np.split(order, bounds) if len(order) else []:
        group = group_all
        _, first = np.unique(item_ids[group], return_index=True)
        group = group[np.sort(first)]  # an item met again is not news
        pos = positive[group]
        held = None
        if hold_out and pos.sum() >= layout.min_interactions:
            last = int(np.flatnonzero(pos)[-1])
            held, group, pos = int(items[group[last]]), group[:last], pos[:last]
        out.user.append(int(user_slots[group[0]]) if len(group) else 0)
        out.train.append(items[group])
        out.positive.append(pos)
        out.held_out.append(held)
        out.ids.append(str(user_ids[group_all[0]]))
    return out


def _windows(sequence: np.ndarray, width: int) -> list[np.ndarray]:
    """``sequence`` as windows of ``width`` slots from its end, sharing one slot with the
    next, left-padded with 0."""
    windows, end = [], len(sequence)
    while end > 0:
        start = max(0, end - width)
        part = sequence[start:end]
        windows.append(np.pad(part, (width - len(part), 0)))
        if start == 0:
            break
        end = start + 1
    return windows


def positive_counts(h: _Histories, n_items: int, held_out: bool = False) -> np.ndarray:
    """Each item slot's positives in training (and, with ``held_out``, the held-out ones
    too: every positive of the data)."""
    counts = np.zeros(n_items + 1, dtype=np.int64)
    for items, pos in zip(h.train, h.positive, strict=True):
        np.add.at(counts, items[pos], 1)
    if held_out:
        np.add.at(counts, [s for s in h.held_out if s], 1)
    return counts


def most_first(counts: np.ndarray) -> np.ndarray:
    """Item slots by count, most first (ties by slot), the padding slot last."""
    counts = counts.copy()
    counts[0] = -1
    return np.lexsort((np.arange(len(counts)), -counts))


def popularity_order(h: _Histories, n_items: int) -> np.ndarray:
    """Each item slot's position when the catalogue is sorted by training positives."""
    position = np.empty(n_items + 1, dtype=np.int64)
    position[most_first(positive_counts(h, n_items))] = np.arange(n_items + 1)
    return position


def fit_interaction_layout(rows: pa.Table, data: Any) -> tuple[InteractionLayout, dict[str, int]]:
    """The layout of ``data.recommend`` over every curated interaction in ``rows``, and
    how many training and validation examples they give, from one pass over each user's
    history. The popular items count every positive (a held-out one is the user's last
    positive: nothing it leaves out is one)."""
    r = data.recommend
    users = sorted(set(_ids(rows.column(r.user))))
    items = sorted(set(_ids(rows.column(r.item))))
    if not items:
        raise DataError("no interactions to recommend from: the dataset is empty")
    layout = InteractionLayout(
        r.user,
        r.item,
        r.timestamp,
        r.rating,
        r.min_rating,
        r.k,
        r.history,
        r.min_interactions,
        users,
        [],
        items,
    )
    h = _histories(rows, layout)
    counts = positive_counts(h, len(items), held_out=True)
    popular = [[items[s - 1], int(counts[s])] for s in most_first(counts)[:POPULAR] if s > 0]
    examples = {
        "train": sum(
            len(_windows(items_[pos & (items_ > 0)], r.history + 1))
            for items_, pos in zip(h.train, h.positive, strict=True)
        ),
        "valid": sum(held is not None for held in h.held_out),
    }
    return replace(layout, popular=popular), examples


def interaction_examples(rows: pa.Table, layout: InteractionLayout, split: str) -> pa.Table:
    """The examples of ``split`` (see the module's docstring)."""
    h = _histories(rows, layout)
    if split == "train":
        users, sequences = [], []
        for user, items, pos in zip(h.user, h.train, h.positive, strict=True):
            known = items[pos & (items > 0)]
            for window in _windows(known, layout.history + 1):
                users.append(user)
                sequences.append(window)
        return pa.table(
            {
                USER: pa.array(users, pa.int64()),
                SEQUENCE: pa.array(sequences, pa.list_(pa.int64(), layout.history + 1)),
            }
        )
    return _validation(h, layout)


def _validation(h: _Histories, layout: InteractionLayout) -> pa.Table:
    position = popularity_order(h, len(layout.items))
    columns: dict[str, list[Any]] = {
        USER: [],
        HISTORY: [],
        SEEN: [],
        TARGET: [],
        POPULARITY_RANK: [],
    }
    for user, items, pos, held in zip(h.user, h.train, h.positive, h.held_out, strict=True):
        if held is None:
            continue
        recent, seen = _ranked(items, pos, layout.history)
        columns[USER].append(user)
        columns[HISTORY].append(recent)
        columns[SEEN].append(seen)
        if held > 0:  # its rank among the items the user has not met, by popularity
            rank = position[held] - int((position[seen] < position[held]).sum())
        else:
            rank = len(layout.items)
        columns[TARGET].append(held if held > 0 else -1)
        columns[POPULARITY_RANK].append(rank)
    return pa.table(
        {
            USER: pa.array(columns[USER], pa.int64()),
            HISTORY: pa.array(columns[HISTORY], pa.list_(pa.int64(), layout.history)),
            SEEN: pa.array(columns[SEEN], pa.list_(pa.int64())),
            TARGET: pa.array(columns[TARGET], pa.int64()),
            POPULARITY_RANK: pa.array(columns[POPULARITY_RANK], pa.int64()),
        }
    )


def _ranked(items: np.ndarray, positive: np.ndarray, history: int) -> tuple[np.ndarray, np.ndarray]:
    """What a model reads of a user's training interactions: the last ``history``
    positives (left-padded) and every item met (never ranked)."""
    recent = items[positive & (items > 0)][-history:]
    return np.pad(recent, (history - len(recent), 0)), np.unique(items[items > 0])


def inputs_of(table: pa.Table) -> np.ndarray:
    """Examples -> the model's input rows: ``[user, sequence]`` for training,
    ``[user, history, seen items (0-padded)]`` for validation."""
    users = table.column(USER).to_numpy().astype(np.float32)[:, None]
    if SEQUENCE in table.column_names:
        return np.hstack([users, _matrix(table.column(SEQUENCE), None)])
    history = _matrix(table.column(HISTORY), None)
    return np.hstack([users, history, _matrix(table.column(SEEN), None)])


def _matrix(column: pa.ChunkedArray, width: int | None) -> np.ndarray:
    rows = column.to_pylist()
    width = width if width is not None else max((len(r) for r in rows), default=0)
    out = np.zeros((len(rows), max(width, 1)), dtype=np.float32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def ranking_examples(rows: pa.Table, layout: InteractionLayout) -> pa.Table:
    """What a model ranks for each user of ``rows`` (their interactions so far, nothing
    held out): the user's id and slot, the last ``history`` positives, every item met."""
    h = _histories(rows, layout, hold_out=False)
    ranked = [
        _ranked(items, pos, layout.history) for items, pos in zip(h.train, h.positive, strict=True)
    ]
    return pa.table(
        {
            layout.user: pa.array(h.ids, pa.string()),
            USER: pa.array(h.user, pa.int64()),
            HISTORY: pa.array([r[0] for r in ranked], pa.list_(pa.int64(), layout.history)),
            SEEN: pa.array([r[1] for r in ranked], pa.list_(pa.int64())),
        }
    )


MAX_VALUES = 1000  # an attribute's most frequent values kept; rarer ones share code 0
BINS = 10  # a numeric attribute's quantile bins


def encode_attributes(
    table: pa.Table, ids: list[str], key: str, columns: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Per attribute of an item (user) table (valid rows, one per id), a code per slot of
    ``ids`` (0: unknown): categories by value, numbers by quantile bin. Each entry holds
    ``name``, ``size`` (the codes besides 0), ``values`` or ``edges``, and ``codes``."""
    slot_of = {name: n + 1 for n, name in enumerate(ids)}
    slots = np.array([slot_of.get(i, 0) for i in _ids(table.column(key))], dtype=np.int64)
    out = []
    for name, spec in columns.items():
        if name == key:
            continue
        column = table.column(name)
        entry: dict[str, Any] = {"name": name}
        if spec.type in ("numeric", "integer"):
            values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
            finite = values[np.isfinite(values)]
            edges = (
                np.unique(np.quantile(finite, np.linspace(0, 1, BINS + 1)[1:-1]))
                if len(finite)
                else np.zeros(0)
            )
            code = np.where(
                np.isfinite(values), np.searchsorted(edges, values, side="right") + 1, 0
            )
            entry.update(edges=edges.tolist(), size=len(edges) + 1)
        else:
            text = pc.cast(column, pa.string()).to_pylist()
            counts = Counter(t for t in text if t is not None)
            kept = sorted(v for v, _ in counts.most_common(MAX_VALUES))
            index = {v: n + 1 for n, v in enumerate(kept)}
            code = np.array([index.get(t, 0) if t is not None else 0 for t in text], dtype=np.int64)
            entry.update(values=kept, size=len(kept))
        codes = np.zeros(len(ids) + 1, dtype=np.int64)
        known = slots > 0
        codes[slots[known]] = code[known]
        entry["codes"] = codes.tolist()
        out.append(entry)
    return out
