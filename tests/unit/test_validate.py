import datetime as dt

import pandas as pd
import pyarrow as pa
import pytest

from rayops.config import ColumnSpec
from rayops.data.validate import (
    ERROR,
    assign_split,
    error_kind,
    validate_frame,
    validate_records,
    validate_table,
)
from rayops.tasks.scoring import label_strings

SPECS = {
    "age": ColumnSpec(type="integer", nullable=False, min=18, max=110),
    "charges": ColumnSpec(type="numeric", min=0),
    "plan": ColumnSpec(type="categorical", values=["a", "b"]),
    "paperless": ColumnSpec(type="boolean"),
    "signup": ColumnSpec(type="datetime"),
    "note": ColumnSpec(type="text"),
    "label": ColumnSpec(type="categorical"),
}
GOOD = {
    "age": "30",
    "charges": "1.5",
    "plan": "a",
    "paperless": "yes",
    "signup": "2024-03-05T10:30:00Z",
    "note": "hi",
    "label": "y",
}


def _row(**cols) -> dict:
    table = validate_table(pa.Table.from_pylist([{**GOOD, **cols}]), SPECS, "label")
    return table.to_pylist()[0]


def test_good_text_row_is_typed():
    row = _row()
    assert row[ERROR] is None
    assert row["age"] == 30 and row["charges"] == 1.5 and row["paperless"] is True
    assert row["signup"] == dt.datetime(2024, 3, 5, 10, 30, tzinfo=dt.UTC)
    assert row["plan"] == "a" and row["note"] == "hi"


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"age": "abc"}, "age: not a finite number ('abc')"),
        ({"age": "12"}, "age: below min 18.0 ('12')"),
        ({"age": "200"}, "age: above max 110.0 ('200')"),
        ({"age": "31.5"}, "age: not an integer ('31.5')"),
        ({"age": ""}, "age: missing value (column is not nullable)"),
        ({"charges": "inf"}, "charges: not a finite number ('inf')"),
        ({"charges": "1,234.50"}, "charges: not a finite number ('1,234.50')"),
        ({"plan": "z"}, "plan: unknown category ('z')"),
        ({"paperless": "maybe"}, "paperless: not a boolean ('maybe')"),
        ({"signup": "yesterday"}, "signup: not an ISO 8601 datetime ('yesterday')"),
        ({"label": "N/A"}, "label: missing label (column is not nullable)"),
    ],
)
def test_each_violation_names_column_and_value(values, reason):
    assert _row(**values)[ERROR] == reason


def test_first_problem_wins_and_existing_errors_are_kept():
    assert _row(age="abc", plan="z")[ERROR].startswith("age:")
    table = pa.Table.from_pylist([{**GOOD, ERROR: "malformed line: expected 7 fields, got 9"}])
    assert validate_table(table, SPECS, "label").column(ERROR)[0].as_py().startswith("malformed")


def test_nullable_values_become_null_not_errors():
    row = _row(charges="NA", plan=None, signup="", note=" ")
    assert row[ERROR] is None
    assert row["charges"] is None and row["plan"] is None and row["signup"] is None


def test_typed_inputs_from_parquet_or_json():
    table = pa.table(
        {
            "age": [40, 17],
            "charges": [2.0, float("nan")],
            "plan": ["b", "a"],
            "paperless": [False, None],
            "signup": pa.array([None, None], pa.string()),
            "note": [1, 2],
            "label": ["n", "y"],
        }
    )
    rows = validate_table(table, SPECS, "label").to_pylist()
    assert rows[0][ERROR] is None and rows[0]["paperless"] is False and rows[0]["note"] == "1"
    assert rows[1][ERROR] == "age: below min 18.0 ('17')"


def test_column_missing_from_source_counts_as_nulls():
    table = pa.Table.from_pylist([{k: v for k, v in GOOD.items() if k not in ("age", "note")}])
    row = validate_table(table, SPECS, "label").to_pylist()[0]
    assert row[ERROR] == "age: missing value (column is not nullable)"


def test_validate_frame_accepts_records_with_mixed_python_types():
    frame = pd.DataFrame([{**GOOD, "age": 30, "charges": 2}, {**GOOD, "age": "x"}])
    errors = validate_frame(frame, SPECS, "label").column(ERROR).to_pylist()
    assert errors == [None, "age: not a finite number ('x')"]


def test_error_kind_strips_the_value():
    assert error_kind("age: below min 18.0 ('12')") == "age: below min 18.0"
    assert error_kind("plan: unknown category ('z (x)')") == "plan: unknown category"


def test_label_strings_prints_integral_floats_as_integers():
    assert label_strings(pa.array([0.0, 1.0, None])).to_pylist() == ["0", "1", None]
    assert label_strings(pd.Series(["yes", None])).to_pylist() == ["yes", None]


def test_split_is_deterministic_order_free_and_near_fraction():
    table = pa.table({"a": list(range(20_000)), "b": ["x", "y"] * 10_000})
    split = assign_split(table, ["a", "b"], 0.2, seed=1)
    assert abs((split == "valid").mean() - 0.2) < 0.02
    order = list(reversed(range(20_000)))
    again = assign_split(table.take(order), ["a", "b"], 0.2, seed=1)
    assert (again[::-1] == split).all()
    assert not (assign_split(table, ["a", "b"], 0.2, seed=2) == split).all()
    same_rows = pa.table({"a": [5, 5], "b": ["x", "x"]})
    first, second = assign_split(same_rows, ["a", "b"], 0.5, seed=3)
    assert first == second


def test_records_validate_as_their_dataframe_does():
    """The serving path skips the DataFrame; it must judge every record the same way."""
    records = [
        {
            "age": 30,
            "charges": 1.5,
            "plan": "a",
            "paperless": True,
            "signup": "2024-03-05",
            "note": "hi",
            "label": "y",
        },
        {
            "age": 31.0,
            "charges": 2,
            "plan": "c",
            "paperless": None,
            "signup": None,
            "note": None,
            "label": "n",
        },  # int/float mixes, unknown plan
        {
            "age": "abc",
            "charges": -1.0,
            "plan": None,
            "paperless": "yes",
            "signup": "soon",
            "note": 5,
            "label": "y",
        },  # text in numbers, below min
        {"charges": 3.0, "plan": "b", "label": "y"},  # keys missing: age not nullable
        {
            "age": 200,
            "charges": None,
            "plan": "b",
            "paperless": False,
            "signup": "2024-01-01T00:00:00Z",
            "note": "x",
            "label": None,
        },
    ]
    direct = validate_records(records, SPECS, "label")
    framed = validate_frame(pd.DataFrame.from_records(records, columns=list(SPECS)), SPECS, "label")
    assert direct.column(ERROR).to_pylist() == framed.column(ERROR).to_pylist()
    for name in SPECS:
        assert direct.column(name).to_pylist() == framed.column(name).to_pylist(), name
    assert direct.column(ERROR).to_pylist()[0] is None


def test_integers_beyond_64_bits_are_refused_by_name_not_an_overflow():
    """A 400-digit number in an integer column without bounds: a quarantined row (or a 422
    when served), never an OverflowError that fails the whole batch."""
    specs = {"calls": ColumnSpec(type="integer"), "amount": ColumnSpec(type="numeric")}
    huge = int("9" * 400)
    table = validate_table(
        pa.Table.from_pylist(
            [
                {"calls": str(huge), "amount": "1"},
                {"calls": str(2**53 + 2), "amount": "1"},
                {"calls": str(-(2**53)), "amount": "9" * 400},
                {"calls": "-5", "amount": "2"},
            ]
        ),
        specs,
        None,
    )
    assert [e and e.split(" (")[0] for e in table.column(ERROR).to_pylist()] == [
        "calls: not a finite number",
        "calls: beyond +-9007199254740992",
        "amount: not a finite number",
        None,
    ]
    records = validate_records(
        [{"calls": huge, "amount": 1.0}, {"calls": 3, "amount": 2.0}, {"calls": 1, "amount": huge}],
        specs,
    )
    assert records.column("calls").to_pylist()[1] == 3
    errors = records.column(ERROR).to_pylist()
    assert errors[0].startswith("calls: not a finite number") and errors[1] is None
    assert errors[2].startswith("amount: not a finite number")
