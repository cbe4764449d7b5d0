import numpy as np
import pyarrow as pa
import pytest

from rayops.config import validate_config
from rayops.data import stats
from rayops.data.preprocess import OTHER, Preprocessor, fit
from rayops.errors import DataError


def _data(task="classification", label_type="categorical", scaling="standard"):
    return validate_config(
        {
            "name": "t",
            "data": {
                "label": "y",
                "task": task,
                "scaling": scaling,
                "columns": {
                    "num": {"type": "numeric"},
                    "cat": {"type": "categorical"},
                    "flag": {"type": "boolean"},
                    "when": {"type": "datetime", "expand": ["hour", "month"]},
                    "y": {"type": label_type},
                },
            },
        }
    ).data


def _table(n=100, seed=0) -> pa.Table:
    rng = np.random.default_rng(seed)
    when = (
        np.datetime64("2024-01-01T00:00") + rng.integers(0, 365 * 24, n).astype("timedelta64[h]")
    ).astype("datetime64[us]")
    return pa.table(
        {
            "num": rng.normal(10, 2, n),
            "cat": rng.choice(["a", "b", "c"], n),
            "flag": rng.integers(0, 2, n).astype(bool),
            "when": pa.array(when, pa.timestamp("us", tz="UTC")),
            "y": rng.choice(["no", "yes"], n),
        }
    )


def _columns(data):
    return {n: data.columns[n] for n in [*data.feature_names, data.label]}


def _fit(data, table):
    return fit(stats.table_stats(table, _columns(data), data.label, data.task), data)


def test_merged_block_stats_equal_whole_table_stats():
    data, table = _data(), _table()
    whole = stats.table_stats(table, _columns(data), "y", "classification")
    parts = stats.merge(
        [
            stats.table_stats(table.slice(0, 37), _columns(data), "y", "classification"),
            stats.table_stats(table.slice(37), _columns(data), "y", "classification"),
        ]
    )
    for key in ("num", "when.hour", "flag"):
        assert stats.mean_std(parts[key]) == pytest.approx(stats.mean_std(whole[key]))
    assert parts["cat"]["counts"] == whole["cat"]["counts"]
    assert stats.mean_std(whole["num"])[0] == pytest.approx(np.mean(table["num"]))
    assert stats.mean_std(whole["num"])[1] == pytest.approx(np.std(table["num"]))


def test_transform_standardizes_one_hots_expands_dates_and_imputes():
    data, table = _data(), _table()
    pre = _fit(data, table)
    assert pre.output_columns == [
        "num",
        "cat=a",
        "cat=b",
        "cat=c",
        f"cat={OTHER}",
        "flag",
        "when.hour",
        "when.month",
    ]
    x = pre.transform(table)
    assert x.dtype == np.float32 and x.shape == (100, 8)
    assert abs(x[:, 0].mean()) < 1e-5 and x[:, 0].std() == pytest.approx(1.0, rel=1e-4)
    assert (x[:, 1:5].sum(axis=1) == 1).all()
    assert abs(x[:, 6].mean()) < 1e-5
    unseen = pa.table(
        {
            "num": pa.array([None], pa.float64()),
            "cat": ["zzz"],
            "flag": pa.array([None], pa.bool_()),
            "when": pa.array([None], pa.timestamp("us", tz="UTC")),
        }
    )
    row = pre.transform(unseen)[0]
    assert row[0] == 0.0 and row[4] == 1.0 and row[6] == 0.0  # mean-imputed, OTHER


def test_state_round_trips_through_json_dict():
    data, table = _data(), _table()
    pre = _fit(data, table)
    again = Preprocessor.from_dict(pre.to_dict())
    np.testing.assert_array_equal(again.transform(table), pre.transform(table))


def test_labels_encode_and_regression_decodes():
    data, table = _data(), _table()
    pre = _fit(data, table)
    assert pre.classes == ["no", "yes"]
    assert list(pre.encode_label(pa.chunked_array([["yes", "no", "maybe"]]))) == [1, 0, -1]
    reg = _data("regression", "numeric")
    table = table.set_column(4, "y", pa.array(np.asarray(table["num"]) * 3))
    rpre = _fit(reg, table)
    encoded = rpre.encode_label(table.column("y"))
    np.testing.assert_allclose(rpre.rules.decode(rpre.label_state, encoded), table["y"], rtol=1e-5)


def test_single_class_is_rejected():
    data = _data()
    table = _table().set_column(4, "y", pa.array(["no"] * 100))
    with pytest.raises(DataError, match="1 class"):
        _fit(data, table)


def test_profile_has_quantiles_histogram_frequencies_and_null_rates():
    data = _data()
    table = _table(2000)
    table = table.set_column(
        0, "num", pa.array([None] * 200 + list(np.asarray(table["num"])[200:]))
    )
    merged = stats.merge(
        stats.table_stats(table.slice(i, 500), _columns(data), "y", "classification")
        for i in range(0, 2000, 500)
    )
    profile = stats.profile(merged)
    num = profile["num"]
    assert num["null_rate"] == pytest.approx(0.1)
    assert num["quantiles"]["0.5"] == pytest.approx(10, abs=0.3)
    assert sum(num["histogram"]["fractions"]) == pytest.approx(1.0)
    assert set(profile["cat"]["frequencies"]) == {"a", "b", "c"}
    assert profile["cat"]["frequencies"]["a"] == pytest.approx(1 / 3, abs=0.05)


def test_extreme_values_are_clipped_to_finite_inputs():
    data, table = _data(), _table()
    pre = _fit(data, table)
    extreme = pa.table(
        {
            "num": [1e308, -1e308],
            "cat": ["a", "b"],
            "flag": [True, False],
            "when": pa.array([None, None], pa.timestamp("us", tz="UTC")),
        }
    )
    x = pre.transform(extreme)
    assert np.isfinite(x).all() and x[0, 0] == 1e4 and x[1, 0] == -1e4


def test_quantile_scaling_gaussianizes_skew_and_marks_where_training_had_nulls():
    data = _data(scaling="quantile")
    rng = np.random.default_rng(1)
    skewed = rng.lognormal(0, 2, 3000)  # a price-like column: most small, a few huge
    skewed[rng.uniform(size=3000) < 0.1] = np.nan
    table = _table(3000).set_column(0, "num", pa.array(skewed, from_pandas=True))
    pre = _fit(data, table)
    assert pre.output_columns[:2] == ["num", "num.missing"]
    x = pre.transform(table)
    present = ~np.isnan(skewed)
    scores = x[present, 0]
    # knots from the 256-value sample statistics keep per block: quantiles within ~6%
    assert abs(np.median(scores)) < 0.2 and 0.85 < scores.std() < 1.15
    assert np.abs(scores).max() < 3.2  # the huge values are no longer outliers
    assert (np.diff(scores[np.argsort(skewed[present])]) >= 0).all()  # order kept
    np.testing.assert_array_equal(x[:, 1], ~present)
    assert (x[~present, 0] == 0).all()  # a null takes the median's score
    both = _fit(_data(scaling="both"), table)
    assert both.output_columns[:3] == ["num", "num.z", "num.missing"]
    twin = both.transform(table)[:, 1]
    assert twin[present].mean() == pytest.approx(0.0, abs=1e-4)  # the standardized value
    assert twin[present].max() > 10  # keeps the tail's scale, which the quantile hides
    no_nulls = _fit(data, _table(300))
    assert "num.missing" not in no_nulls.output_columns
    constant = _table(300).set_column(0, "num", pa.array(np.full(300, 5.0)))
    assert "knots" not in _fit(data, constant).features[0]  # standardized instead


def test_the_request_path_transform_equals_validation_then_transform():
    """A replica skips the second validation of records its request schema checked:
    transform_rows on what the schema hands over is the Arrow path's matrix, exactly."""
    from rayops.data.validate import validate_records
    from rayops.serve.bodies import record_model

    data = _data(scaling="both")
    rng = np.random.default_rng(2)
    table = _table(400, seed=3)
    num = rng.lognormal(0, 1, 400)
    num[rng.uniform(size=400) < 0.2] = np.nan  # nulls in training: a missing column
    pre = _fit(data, table.set_column(0, "num", pa.array(num, from_pandas=True)))
    assert "num.missing" in pre.output_columns and "num.z" in pre.output_columns
    schema = _columns(data)
    record = record_model(schema, "y")
    raw = [
        {
            "num": float(v) if rng.uniform() > 0.2 else None,
            "cat": str(rng.choice(["a", "b", "c", "never seen", None]))
            if rng.uniform() > 0.1
            else None,
            "flag": bool(rng.integers(0, 2)) if rng.uniform() > 0.1 else None,
            "when": rng.choice(
                [
                    "2024-03-01T05:30:00",
                    "2024-12-31T23:59:59+00:00",
                    "2024-06-15T12:00:00+02:00",
                    None,
                ]
            ),
        }
        for v in rng.lognormal(0, 3, 200)
    ]
    raw += [
        {"num": 0, "cat": "a", "flag": True, "when": "2024-01-01T00:00:00Z"},  # an int
        {"num": 1e308, "cat": None, "flag": False, "when": None},
    ]  # clipped
    typed = [record.model_validate(r).model_dump() for r in raw]
    arrow = pre.transform(validate_records(raw, {n: schema[n] for n in data.feature_names}))
    fast = pre.transform_rows(typed)
    assert fast.dtype == np.float32 and fast.shape == (len(raw), pre.n_features)
    np.testing.assert_array_equal(fast, arrow)
    assert fast[:, pre.output_columns.index(f"cat={OTHER}")].sum() > 0  # unknowns, nulls
    assert pre.transform_rows([]).shape == (0, pre.n_features)
