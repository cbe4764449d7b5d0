import numpy as np
import pytest
from sklearn import metrics as sk

from rayops.tasks.scoring import (
    classification_metrics,
    confusion_matrix,
    regression_metrics,
    regression_sums,
)


@pytest.mark.parametrize("classes", [2, 4])
def test_classification_matches_sklearn(classes):
    rng = np.random.default_rng(classes)
    actual = rng.integers(0, classes, 500)
    predicted = np.where(rng.uniform(size=500) < 0.7, actual, rng.integers(0, classes, 500))
    got = classification_metrics(confusion_matrix(predicted, actual, classes))
    average = "binary" if classes == 2 else "macro"
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(actual, predicted))
    assert got["precision"] == pytest.approx(sk.precision_score(actual, predicted, average=average))
    assert got["recall"] == pytest.approx(sk.recall_score(actual, predicted, average=average))
    assert got["f1"] == pytest.approx(sk.f1_score(actual, predicted, average=average))


def test_summed_shards_equal_whole():
    rng = np.random.default_rng(0)
    actual, predicted = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    whole = confusion_matrix(predicted, actual, 2)
    parts = confusion_matrix(predicted[:100], actual[:100], 2) + confusion_matrix(
        predicted[100:], actual[100:], 2
    )
    np.testing.assert_array_equal(whole, parts)


def test_never_predicting_positive_scores_zero_f1():
    actual = np.array([0, 0, 1, 1])
    got = classification_metrics(confusion_matrix(np.zeros(4), actual, 2))
    assert got["f1"] == 0.0 and got["accuracy"] == 0.5


def test_regression_matches_sklearn_and_shards_add_up():
    rng = np.random.default_rng(1)
    actual = rng.normal(5, 2, 400)
    predicted = actual + rng.normal(0, 0.5, 400)
    got = regression_metrics(
        regression_sums(predicted[:150], actual[:150])
        + regression_sums(predicted[150:], actual[150:])
    )
    assert got["rmse"] == pytest.approx(np.sqrt(sk.mean_squared_error(actual, predicted)))
    assert got["mae"] == pytest.approx(sk.mean_absolute_error(actual, predicted))
    assert got["r2"] == pytest.approx(sk.r2_score(actual, predicted))
