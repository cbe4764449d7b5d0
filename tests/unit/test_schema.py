import math

import pandas as pd

from rayops.config import ColumnSpec
from rayops.data.schema import ERROR_COLUMN, assign_split, error_kind, validate_frame

SPECS = {
    "age": ColumnSpec(type="integer", nullable=False, min=18, max=110),
    "charges": ColumnSpec(type="numeric", min=0),
    "plan": ColumnSpec(type="categorical", values=["a", "b"]),
    "paperless": ColumnSpec(type="boolean"),
    "label": ColumnSpec(type="categorical"),
}


def _frame(**cols):
    base = {"age": ["30"], "charges": ["1.5"], "plan": ["a"], "paperless": ["yes"], "label": ["y"]}
    base.update(cols)
    return pd.DataFrame(base)


def _error(**cols):
    return validate_frame(_frame(**cols), SPECS, "label")[ERROR_COLUMN].iloc[0]


def test_good_row_is_typed():
    out = validate_frame(_frame(), SPECS, "label")
    assert out[ERROR_COLUMN].iloc[0] is None
    assert out["age"].iloc[0] == 30.0 and out["paperless"].iloc[0] == 1.0
    assert out["plan"].iloc[0] == "a"


def test_each_violation_has_a_reason_naming_column_and_value():
    assert _error(age=["abc"]) == "age: not a finite number ('abc')"
    assert _error(age=["12"]).startswith("age: below min 18.0")
    assert _error(age=["31.5"]).startswith("age: not an integer")
    assert _error(age=[""]) == "age: missing value (column is not nullable)"
    assert _error(charges=["inf"]).startswith("charges: not a finite number")
    assert _error(plan=["z"]) == "plan: unknown category ('z')"
    assert _error(paperless=["maybe"]) == "paperless: not a boolean ('maybe')"
    assert _error(label=["N/A"]) == "label: missing label (column is not nullable)"


def test_nullable_values_become_null_not_errors():
    out = validate_frame(_frame(charges=["NA"], plan=[None]), SPECS, "label")
    assert out[ERROR_COLUMN].iloc[0] is None
    assert math.isnan(out["charges"].iloc[0]) and out["plan"].iloc[0] is None


def test_typed_inputs_from_parquet_or_json():
    frame = pd.DataFrame({"age": [40], "charges": [2.0], "plan": ["b"], "paperless": [False],
                          "label": ["n"]})
    out = validate_frame(frame, SPECS, "label")
    assert out[ERROR_COLUMN].iloc[0] is None and out["paperless"].iloc[0] == 0.0


def test_error_kind_strips_the_value():
    assert error_kind("age: below min 18.0 (12)") == "age: below min 18.0"
    assert error_kind("plan: unknown category ('z')") == "plan: unknown category"


def test_split_is_deterministic_order_free_and_near_fraction():
    frame = pd.DataFrame({"a": range(20_000), "b": ["x"] * 20_000})
    split = assign_split(frame, ["a", "b"], 0.2, seed=1)
    assert abs((split == "valid").mean() - 0.2) < 0.02
    shuffled = frame.sample(frac=1.0, random_state=0)
    again = assign_split(shuffled, ["a", "b"], 0.2, seed=1)
    assert (again.sort_index() == split).all()
    assert not (assign_split(frame, ["a", "b"], 0.2, seed=2) == split).all()
