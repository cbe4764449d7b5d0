import pandas as pd

from rayops.config import load_config
from rayops.data.schema import ERROR, validate_frame
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
