import numpy as np
import pandas as pd
import pytest

from rayops.config import validate_config
from rayops.data.preprocess import OTHER, Preprocessor, batch_stats, fit, label_strings, merge_stats
from rayops.errors import DataError


def _data(task="classification", label_type="categorical"):
    return validate_config({
        "name": "t",
        "data": {"label": "y", "task": task, "columns": {
            "num": {"type": "numeric"}, "cat": {"type": "categorical"},
            "flag": {"type": "boolean"}, "y": {"type": label_type}}},
    }).data


def _frame(n=100, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "num": rng.normal(10, 2, n),
        "cat": rng.choice(["a", "b", "c"], n).astype(object),
        "flag": rng.integers(0, 2, n).astype(float),
        "y": rng.choice(["no", "yes"], n).astype(object),
    })


def test_merged_batch_stats_equal_whole_frame_stats():
    data, frame = _data(), _frame()
    whole = fit(batch_stats(frame, data), data)
    parts = merge_stats([batch_stats(frame.iloc[:37], data), batch_stats(frame.iloc[37:], data)])
    split = fit(parts, data)
    assert whole.features[0]["mean"] == pytest.approx(split.features[0]["mean"])
    assert whole.features[0]["std"] == pytest.approx(split.features[0]["std"])
    assert whole.to_dict()["output_columns"] == split.to_dict()["output_columns"]
    assert whole.features[0]["mean"] == pytest.approx(frame["num"].mean())
    assert whole.features[0]["std"] == pytest.approx(frame["num"].std(ddof=0))


def test_transform_standardizes_one_hots_and_imputes():
    data, frame = _data(), _frame()
    pre = fit(batch_stats(frame, data), data)
    assert pre.output_columns == ["num", "cat=a", "cat=b", "cat=c", f"cat={OTHER}", "flag"]
    x = pre.transform(frame)
    assert x.dtype == np.float32 and x.shape == (100, 6)
    assert abs(x[:, 0].mean()) < 1e-5 and x[:, 0].std() == pytest.approx(1.0, rel=1e-4)
    assert (x[:, 1:5].sum(axis=1) == 1).all()
    unseen = pd.DataFrame({"num": [np.nan], "cat": ["zzz"], "flag": [np.nan]})
    row = pre.transform(unseen)[0]
    assert row[0] == 0.0 and row[4] == 1.0  # mean-imputed, unseen category -> OTHER


def test_state_round_trips_through_json_dict():
    data, frame = _data(), _frame()
    pre = fit(batch_stats(frame, data), data)
    again = Preprocessor.from_dict(pre.to_dict())
    np.testing.assert_array_equal(again.transform(frame), pre.transform(frame))


def test_labels_encode_and_regression_decodes():
    data, frame = _data(), _frame()
    pre = fit(batch_stats(frame, data), data)
    assert pre.classes == ["no", "yes"]
    assert list(pre.encode_label(pd.Series(["yes", "no", "maybe"], dtype=object))) == [1, 0, -1]
    reg = _data("regression", "numeric")
    frame["y"] = frame["num"] * 3
    rpre = fit(batch_stats(frame, reg), reg)
    encoded = rpre.encode_label(frame["y"])
    np.testing.assert_allclose(rpre.decode_regression(encoded), frame["y"], rtol=1e-5)


def test_integer_labels_print_without_decimal():
    assert list(label_strings(pd.Series([0.0, 1.0, np.nan]))) == ["0", "1", None]


def test_single_class_is_rejected():
    data, frame = _data(), _frame()
    frame["y"] = "no"
    with pytest.raises(DataError, match="1 class"):
        fit(batch_stats(frame, data), data)
