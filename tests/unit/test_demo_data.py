import pandas as pd

from rayops.config import load_config
from rayops.data.validate import ERROR, validate_frame
from rayops.demo import churn, config_path
from rayops.storage import resolve


def test_generator_is_deterministic_by_seed():
    a, b, c = churn.generate(1000, 3), churn.generate(1000, 3), churn.generate(1000, 4)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


def test_demo_data_has_nulls_malformed_rows_and_a_learnable_label():
    cfg = load_config(config_path())
    frame = churn.generate(5000, 7)
    columns = {n: cfg.data.columns[n] for n in [*cfg.data.feature_names, cfg.data.label]}
    text = frame.map(lambda v: "" if v is None or v != v else str(v))
    checked = validate_frame(text, columns, "churned").to_pandas()
    bad = checked[ERROR].notna().mean()
    assert 0.003 < bad < 0.05
    assert frame["total_charges"].isna().mean() > 0.01
    good = checked[checked[ERROR].isna()]
    rate = (good["churned"] == "yes").mean()
    assert 0.2 < rate < 0.5
    by_contract = good.groupby("contract")["churned"].apply(lambda s: (s == "yes").mean())
    assert by_contract["month-to-month"] > 2 * by_contract["two-year"]


def test_write_splits_into_files(tmp_path):
    target = resolve(str(tmp_path))
    uris = churn.write(churn.generate(100, 1), target, fmt="json", files=3)
    assert len(uris) == 3 and all(u.endswith(".jsonl") for u in uris)
    lines = sum(len(target.join(u.rsplit("/", 1)[1]).read_bytes().splitlines()) for u in uris)
    assert lines == 100


def _typed(cfg, frame):
    import pyarrow.compute as pc

    columns = {n: cfg.data.columns[n] for n in [*cfg.data.feature_names, cfg.data.label]}
    text = frame.map(lambda v: "" if v is None or v != v else str(v))
    typed = validate_frame(text, columns, cfg.data.label)
    return typed.filter(pc.is_null(typed.column(ERROR))), columns


def test_every_operate_demo_brings_a_month_that_drifts_from_whatever_the_champion_saw(tmp_path):
    """`rayops demo --operate` in a lake where it ran before: the next month is new (its
    prices higher again) and the monitor's verdict on it is drift, against a champion that
    trained on the first month and every later month so far (it sat on the threshold)."""
    from rayops.data import stats
    from rayops.demo.operate import OPERATE_OVERRIDES, later_month_records, next_month
    from rayops.demo.operate import write_later_month as write_month
    from rayops.monitor.drift import dataset_drift
    from rayops.monitor.report import thresholds_of, window_columns

    cfg = load_config(config_path(), [f"storage.root={tmp_path}", *OPERATE_OVERRIDES])
    seen = [churn.generate(3000, 7)]
    for month in (1, 2, 3):
        assert next_month(cfg) == month
        typed, columns = _typed(cfg, pd.concat(seen))
        profile = stats.profile(stats.table_stats(typed, columns, cfg.data.label, cfg.data.task))
        records, _ = later_month_records(cfg, 600, 10 + month, month)
        window, _ = window_columns(pd.DataFrame(records), columns, cfg.data.label)
        report = dataset_drift(profile, window, thresholds_of(cfg))
        assert report.verdict == "drift", (month, report.reasons)
        assert "monthly_charges" in report.drifted
        # and a payment method no earlier month had: something a retrained model can learn
        new = churn.new_payment(month)
        assert new in {r["payment_method"] for r in records}
        assert new not in set(pd.concat(seen)["payment_method"])
        write_month(cfg, 600, 10 + month, month)
        seen.append(churn.later_month(600, 10 + month, month))  # the champion learns it


def test_viewing_is_deterministic_has_malformed_rows_and_a_popularity_skew(tmp_path):
    from rayops.demo import watching

    a = watching.generate(users=80, items=60, weeks=4, per_user=12, seed=2)
    pd.testing.assert_frame_equal(
        a, watching.generate(users=80, items=60, weeks=4, per_user=12, seed=2)
    )
    cfg = load_config(config_path("watching"))
    text = a.map(lambda v: "" if v is None or v != v else str(v))
    checked = validate_frame(text, cfg.data.columns).to_pandas()
    reasons = checked[ERROR].dropna()
    assert {r.split(":")[0] for r in reasons} == {"user_id", "rating", "ts"}
    good = checked[checked[ERROR].isna()]
    assert not good.duplicated(["user_id", "item_id"]).any()  # a title once per viewer
    counts = good["item_id"].value_counts()
    assert counts.iloc[0] > 3 * counts.median() and counts.iloc[-1] < counts.median() / 3
    by_user = good.sort_values("ts").groupby("user_id")["ts"]
    assert (by_user.apply(lambda s: s.is_monotonic_increasing)).all()
    assert len(watching.write(a, resolve(str(tmp_path)))) == 4  # a file per week
