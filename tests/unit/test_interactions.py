"""Interactions laid out for a recommender: the leave-last-out split by time, the
popularity baseline's ranks, the ranking metrics, the recommender's config."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from rayops.config import validate_config
from rayops.data.interactions import (
    HISTORY,
    SEEN,
    SEQUENCE,
    USER,
    InteractionLayout,
    interaction_examples,
    ranking_examples,
)
from rayops.errors import ConfigError
from rayops.tasks import task_of
from rayops.tasks.recommendation import POPULARITY_RANK, TARGET, ranking_sums


def _data(**recommend) -> dict:
    return {
        "task": "recommendation",
        "columns": {
            "u": {"type": "categorical", "nullable": False},
            "i": {"type": "categorical", "nullable": False},
            "ts": {"type": "datetime", "nullable": False},
            "r": {"type": "integer"},
        },
        "recommend": {"user": "u", "item": "i", "timestamp": "ts", "rating": "r", **recommend},
    }


def _config(**recommend):
    return validate_config({"name": "rec", "data": _data(**recommend)})


def _rows(events: list[tuple[str, str, int, int]]) -> pa.Table:
    """(user, item, hour, rating) -> typed interactions, deliberately out of time order."""
    frame = pd.DataFrame(events[::-1], columns=["u", "i", "hour", "r"])
    ts = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(frame["hour"], unit="h")
    return pa.table({"u": frame["u"], "i": frame["i"], "ts": pa.array(ts), "r": frame["r"]})


def _layout(rows: pa.Table, **recommend) -> InteractionLayout:
    return InteractionLayout.fit(rows, _config(**recommend).data)


def test_each_users_last_positive_is_held_out_and_nothing_later_reaches_training():
    events = [("a", f"m{h}", h, 5) for h in range(6)]  # a: m0..m5, m5 last
    events += [("a", "m9", 10, 1)]  # rated low after the held-out one: left out
    events += [("a", "m2", 3, 4)]  # a re-watch: not news
    events += [("b", f"m{h}", h, 5) for h in range(3)]  # b: too few, training only
    rows = _rows(events)
    layout = _layout(rows, min_rating=3, history=4)
    slot = {item: n + 1 for n, item in enumerate(layout.items)}
    valid = interaction_examples(rows, layout, "valid").to_pylist()
    assert len(valid) == 1
    (a,) = valid
    assert a[TARGET] == slot["m5"]
    assert set(a[SEEN]) == {slot[f"m{h}"] for h in range(5)}  # m9 came later: unseen
    assert a[HISTORY] == [slot[f"m{h}"] for h in range(1, 5)]  # the latest 4, in order
    train = interaction_examples(rows, layout, "train").to_pylist()
    learned = {s for row in train for s in row[SEQUENCE]} - {0}
    assert slot["m5"] not in learned and slot["m9"] not in learned
    b_rows = [r[SEQUENCE] for r in train if r[USER] == layout.users.index("b") + 1]
    assert b_rows == [[0, 0, slot["m0"], slot["m1"], slot["m2"]]]
    a_rows = [r[SEQUENCE] for r in train if r[USER] == layout.users.index("a") + 1]
    # windows of history + 1 from the end, sharing one item: each step learned once
    assert a_rows == [[slot["m0"], slot["m1"], slot["m2"], slot["m3"], slot["m4"]]]


def test_low_ratings_are_seen_but_neither_learned_nor_held_out():
    events = [("a", f"m{h}", h, 5 if h % 2 == 0 else 1) for h in range(12)]
    rows = _rows(events)
    layout = _layout(rows, min_rating=3, history=3)
    slot = {item: n + 1 for n, item in enumerate(layout.items)}
    (a,) = interaction_examples(rows, layout, "valid").to_pylist()
    assert a[TARGET] == slot["m10"]  # the last positive; m11 (rated 1) came after it
    assert slot["m9"] in a[SEEN]
    assert a[HISTORY] == [slot["m4"], slot["m6"], slot["m8"]]


def test_the_popularity_rank_counts_only_unseen_items_more_popular():
    events = [(u, "hit", 0, 5) for u in "bcd"] + [(u, "mid", 1, 5) for u in "bc"]
    events += [("b", "x", 2, 5)]
    events += [
        ("a", "hit", 0, 5),
        ("a", "q", 1, 5),
        ("a", "r", 2, 5),
        ("a", "s", 3, 5),
        ("a", "mid", 4, 5),
        ("a", "x", 5, 5),
    ]  # a holds out x
    rows = _rows(events)
    layout = _layout(rows, min_interactions=5)
    (a,) = interaction_examples(rows, layout, "valid").to_pylist()
    # unseen by a in training: only x, so x ranks first whatever its popularity
    assert a[POPULARITY_RANK] == 0
    encoded = np.array([[a[TARGET], a[POPULARITY_RANK]]], dtype=np.float32)
    top = np.array([[a[TARGET], 1, 2]], dtype=np.float32)
    sums = ranking_sums(top, encoded, k=3)
    assert sums.tolist() == [1, 1, 1.0, 1, 1.0]


def test_ranking_metrics_are_recall_and_ndcg_of_the_held_out_item():
    encoded = np.array([[7, 0], [3, 12], [5, 2], [-1, 40]], dtype=np.float32)
    top = np.array([[7, 1, 2], [1, 3, 2], [1, 2, 4], [1, 2, 3]], dtype=np.float32)
    task = task_of("recommendation")
    metrics = task.metrics_of(task.sufficient_stats(top, encoded, {"k": 3}), {"k": 3})
    assert metrics["valid_recall_3"] == pytest.approx(2 / 4)  # 7 at 1st, 3 at 2nd
    assert metrics["valid_ndcg_3"] == pytest.approx((1 + 1 / np.log2(3)) / 4)
    # popularity: ranks 0 and 2 are inside the top 3
    assert metrics["valid_popularity_recall_3"] == pytest.approx(2 / 4)
    assert metrics["valid_popularity_ndcg_3"] == pytest.approx((1 + 1 / np.log2(4)) / 4)


def test_an_item_the_layout_does_not_know_is_a_miss_and_users_are_ranked_whole():
    rows = _rows([("a", f"m{h}", h, 5) for h in range(6)])
    layout = InteractionLayout.fit(_rows([("a", f"m{h}", h, 5) for h in range(5)]), _config().data)
    (a,) = interaction_examples(rows, layout, "valid").to_pylist()
    assert a[TARGET] == -1 and a[POPULARITY_RANK] == len(layout.items)
    (ranked,) = ranking_examples(rows, layout).to_pylist()
    assert ranked["u"] == "a" and sorted(ranked[SEEN]) == [1, 2, 3, 4, 5]


def test_the_recommend_section_is_checked_against_the_columns():
    cfg = _config(k=20)
    assert cfg.data.label == "i"  # the item, without data.label
    assert cfg.model.family == "sasrec"  # the task's own default
    assert cfg.target_metric == ("valid_ndcg_20", "max")
    raw = {"name": "rec", "data": _data(k=20), "tune": {"metric": "valid_ndcg_10"}}
    with pytest.raises(ConfigError, match="valid_ndcg_10.*valid_ndcg_20"):
        validate_config(raw)
    raw = {"name": "rec", "data": _data(), "model": {"family": "mlp"}}
    with pytest.raises(ConfigError, match="'mlp' learns .*not data.task 'recommendation'"):
        validate_config(raw)
    raw = {"name": "rec", "data": {**_data(), "recommend": None, "label": "i"}}
    with pytest.raises(ConfigError, match="needs a data.recommend section"):
        validate_config(raw)
    data = _data()
    data["columns"]["ts"] = {"type": "numeric", "nullable": False}
    with pytest.raises(
        ConfigError, match="data.recommend.timestamp 'ts' must be declared datetime"
    ):
        validate_config({"name": "rec", "data": data})
    data = _data(rating=None, min_rating=3)
    with pytest.raises(ConfigError, match="min_rating 3.0 needs a rating column"):
        validate_config({"name": "rec", "data": data})
    data = _data()
    data["columns"]["genre"] = {"type": "categorical"}
    with pytest.raises(ConfigError, match=r"\['genre'\] are not data.recommend"):
        validate_config({"name": "rec", "data": data})


def test_item_attributes_are_coded_per_catalogue_slot():
    from rayops.config import ColumnSpec
    from rayops.data.interactions import encode_attributes

    table = pa.table(
        {
            "i": ["b", "a", "zz"],
            "genre": ["drama", None, "comedy"],
            "year": [1990.0, 2001.0, 1950.0],
        }
    )
    columns = {
        "i": ColumnSpec(type="categorical", nullable=False),
        "genre": ColumnSpec(type="categorical"),
        "year": ColumnSpec(type="integer"),
    }
    genre, year = encode_attributes(table, ["a", "b", "c"], "i", columns)
    assert genre["values"] == ["comedy", "drama"] and genre["size"] == 2
    # slots: a=1 (no genre), b=2 (drama), c=3 (not in the table); zz is not in the catalogue
    assert genre["codes"] == [0, 0, 2, 0]
    assert year["codes"][3] == 0 and year["codes"][1] > year["codes"][2] > 0


def test_the_item_table_is_checked_where_the_config_loads():
    data = _data(
        items={
            "source": "titles.csv",
            "columns": {"i": {"type": "categorical"}, "g": {"type": "text"}},
        }
    )
    with pytest.raises(
        ConfigError, match="items.columns must declare the column 'i' with nullable"
    ):
        validate_config({"name": "rec", "data": data})
    data = _data(
        items={
            "source": "titles.csv",
            "columns": {
                "i": {"type": "categorical", "nullable": False},
                "out": {"type": "datetime"},
            },
        }
    )
    with pytest.raises(ConfigError, match=r"\['out'\]: datetime attributes are not read"):
        validate_config({"name": "rec", "data": data})


def test_an_attribute_table_that_is_missing_or_broken_fails_the_ingest(tmp_path):
    from rayops.config.recommend import AttributeTableConfig
    from rayops.data.observations import read_attributes
    from rayops.errors import DataError
    from rayops.storage import resolve

    table = AttributeTableConfig(
        source="t.csv",
        max_quarantine_fraction=0.5,
        columns={"i": {"type": "categorical", "nullable": False}, "year": {"type": "integer"}},
    )
    with pytest.raises(DataError, match="t.csv does not exist"):
        read_attributes(table, resolve(str(tmp_path / "t.csv")), "i")
    (tmp_path / "t.csv").write_text("i,year\na,1990\nb,199x\na,2001\nc,2003\n")
    kept = read_attributes(table, resolve(str(tmp_path / "t.csv")), "i")
    assert kept.to_pydict() == {"i": ["a", "c"], "year": [1990, 2003]}  # b broken, a once
    strict = table.model_copy(update={"max_quarantine_fraction": 0.1})
    (tmp_path / "t.csv").write_text("i,year\na,1990\nb,199x\nc,20x3\n")
    with pytest.raises(DataError, match="2 of 3 rows break its contract"):
        read_attributes(strict, resolve(str(tmp_path / "t.csv")), "i")
