import numpy as np
import pyarrow as pa
import pytest

from rayops.config import ColumnSpec
from rayops.data import stats
from rayops.monitor.drift import DriftThresholds, dataset_drift, js_distance, psi

COLUMNS = {
    "x": ColumnSpec(type="numeric"),
    "price": ColumnSpec(type="numeric"),
    "plan": ColumnSpec(type="categorical"),
}
PLANS = ["basic", "plus", "pro"]


def _table(rows: int, seed: int, shift: float = 0.0, plans=(0.6, 0.3, 0.1)) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "x": rng.normal(50 + shift, 10, rows),
            "price": rng.lognormal(3, 1, rows),
            "plan": rng.choice(PLANS, rows, p=list(plans)),
        }
    )


def _profile(table: pa.Table) -> dict:
    # as ingest builds it: statistics per block, merged, then the profile
    blocks = [
        stats.table_stats(table.slice(i, 10_000), COLUMNS) for i in range(0, table.num_rows, 10_000)
    ]
    return stats.profile(stats.merge(blocks))


def _window(table: pa.Table) -> dict:
    return {name: table.column(name).to_pylist() for name in COLUMNS}


@pytest.fixture(scope="module")
def reference() -> dict:
    return _profile(_table(100_000, seed=1))


def test_identical_distributions_at_100000_rows_are_not_flagged(reference):
    report = dataset_drift(reference, _window(_table(100_000, seed=2)))
    assert report.verdict == "ok" and report.drifted == []
    assert all(f.verdict == "ok" and f.psi < 0.02 for f in report.features), report.features


def test_a_planted_shift_is_flagged_on_exactly_the_shifted_features(reference):
    shifted = _table(20_000, seed=3, shift=8.0, plans=(0.2, 0.3, 0.5))
    report = dataset_drift(reference, _window(shifted))
    verdicts = {f.name: f.verdict for f in report.features}
    assert verdicts == {"x": "drift", "price": "ok", "plan": "drift"}
    assert report.verdict == "drift" and sorted(report.drifted) == ["plan", "x"]
    assert "2 of 3 features drifted" in report.reasons[0]
    plan = next(f for f in report.features if f.name == "plan")
    assert plan.bins[-1] == "__other__" and plan.current[plan.bins.index("pro")] == pytest.approx(
        0.5, abs=0.02
    )


def test_one_drifted_key_feature_is_enough_and_unseen_values_count(reference):
    window = _window(_table(5_000, seed=4))
    window["plan"] = ["enterprise"] * 1_000 + window["plan"][1_000:]  # 20% never seen
    thresholds = DriftThresholds(key_features=("plan",), drifted_share=0.5)
    report = dataset_drift(reference, window, thresholds)
    assert report.drifted == ["plan"] and report.verdict == "drift"
    assert report.reasons == ["key feature(s) drifted: plan"]  # 1 of 3 is below 50%
    assert dataset_drift(reference, window, DriftThresholds(drifted_share=0.5)).verdict == "warn"


def test_a_ten_row_window_says_insufficient_data(reference):
    report = dataset_drift(reference, _window(_table(10, seed=5, shift=30.0)))
    assert report.verdict == "insufficient data" and report.drifted == []
    assert all(f.verdict == "insufficient data" and f.psi is None for f in report.features)
    assert "10 row(s)" in report.reasons[0]


def test_null_rates_and_values_outside_the_reference_range(reference):
    window = _window(_table(2_000, seed=6))
    window["x"] = [None] * 500 + [1e9] * 1_500  # nulls, and far above every bin
    x = next(f for f in dataset_drift(reference, window).features if f.name == "x")
    assert x.null_rate == 0.25 and x.reference_null_rate == 0.0
    assert x.current[-1] == 1.0 and x.verdict == "drift"


def test_psi_and_js_distance_are_zero_for_equal_and_grow_with_difference():
    even = np.full(4, 0.25)
    assert psi(even, even) == pytest.approx(0.0) and js_distance(even, even) == pytest.approx(0.0)
    skewed = np.array([0.7, 0.1, 0.1, 0.1])
    assert 0 < psi(even, np.array([0.3, 0.25, 0.25, 0.2])) < psi(even, skewed)
    assert js_distance(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0, abs=1e-3)
