"""Cast raw columns to their declared types and check them against the schema contract.

Vectorized on Arrow tables (one Ray Data block at a time). Raw values may arrive as text
(CSV, JSON with mixed types) or already typed (Parquet, JSON): both go through the same
checks. A row that breaks the contract is kept with the first problem in :data:`ERROR`, so
the caller can count and quarantine it: nothing is lost silently.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rayops.config import ColumnSpec

ERROR = "_error"
SPLIT = "rayops_split"  # a hive partition of the curated data: no leading '_' (hidden)
SOURCE_FILE = "_source_file"
SOURCE_ROW = "_source_row"
RAW = "_raw"
PROVENANCE = (SOURCE_FILE, SOURCE_ROW, RAW)

NULL_STRINGS = ["", "NA", "N/A", "n/a", "na", "null", "NULL", "None", "none", "NaN", "nan", "-"]
_TRUE = ["true", "t", "yes", "y", "1", "1.0"]
_FALSE = ["false", "f", "no", "n", "0", "0.0"]
BOOLEAN_WORDS = {**dict.fromkeys(_TRUE, True), **dict.fromkeys(_FALSE, False)}
NUMBER_RE = r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$"
_NULL_STR = pa.scalar(None, pa.string())

ARROW_TYPES: dict[str, pa.DataType] = {
    "numeric": pa.float64(),
    "integer": pa.int64(),
    "categorical": pa.string(),
    "text": pa.string(),
    "boolean": pa.bool_(),
    "datetime": pa.timestamp("us", tz="UTC"),
}


# The largest integer magnitude an integer column takes: every value is read as float64
# (validation, the model's input), which holds integers exactly up to 2**53 and loses
# digits beyond it; a 400-digit number would overflow it altogether.
MAX_INTEGER = 2**53


def _is_text(arr: pa.ChunkedArray) -> bool:
    return pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)


def text_values(arr: pa.ChunkedArray) -> pa.ChunkedArray:
    """Trimmed text with the usual null markers ('', 'NA', 'null', ...) turned into nulls."""
    if not _is_text(arr):
        arr = pc.cast(arr, pa.string())
    trimmed = pc.utf8_trim_whitespace(arr)
    return pc.if_else(pc.is_in(trimmed, value_set=pa.array(NULL_STRINGS)), _NULL_STR, trimmed)


def _reason(mask: pa.ChunkedArray, name: str, problem: str, shown: pa.ChunkedArray) -> pa.Array:
    """``"{name}: {problem} ('{value}')"`` where ``mask`` is true, null elsewhere."""
    mask = pc.fill_null(mask, False)
    if not pc.any(mask).as_py():  # the common case: skip building strings for every row
        return pa.nulls(len(mask), pa.string())
    text = pc.binary_join_element_wise(
        f"{name}: {problem} ('", pc.cast(shown, pa.string()), "')", ""
    )
    return pc.if_else(mask, text, _NULL_STR)


def _cast_numeric(
    name: str, raw: pa.ChunkedArray, spec: ColumnSpec
) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    if _is_text(raw) or pa.types.is_null(raw.type):
        shown = text_values(raw)
        ok = pc.match_substring_regex(shown, NUMBER_RE)
        values = pc.cast(pc.if_else(ok, shown, _NULL_STR), pa.float64())
        reason = _reason(pc.invert(ok), name, "not a finite number", shown)
    elif pa.types.is_integer(raw.type) or pa.types.is_floating(raw.type):
        shown = raw
        values = pc.cast(raw, pa.float64())
        reason = pa.nulls(len(raw), pa.string())
    else:
        shown = pc.cast(raw, pa.string())
        values = pa.nulls(len(raw), pa.float64())
        reason = _reason(pc.is_valid(raw), name, f"not a number ({raw.type})", shown)
    # "1e999" or 400 digits of text parse as infinity
    finite = pc.is_finite(values)
    reason = pc.coalesce(reason, _reason(pc.invert(finite), name, "not a finite number", shown))
    values = pc.if_else(finite, values, pa.scalar(None, pa.float64()))
    reason = pc.coalesce(reason, _range_reason(name, values, spec, shown))
    if spec.type == "integer":
        fraction = pc.not_equal(values, pc.floor(values))
        reason = pc.coalesce(reason, _reason(fraction, name, "not an integer", shown))
        outside = pc.greater(pc.abs(values), float(MAX_INTEGER))
        reason = pc.coalesce(
            reason,
            _reason(
                outside, name, f"beyond +-{MAX_INTEGER} (2**53, where integers lose digits)", shown
            ),
        )
    good = pc.if_else(pc.is_null(reason), values, pa.scalar(None, pa.float64()))
    return pc.cast(good, ARROW_TYPES[spec.type]), reason


def _range_reason(
    name: str, values: pa.ChunkedArray, spec: ColumnSpec, shown: pa.ChunkedArray
) -> pa.Array:
    reason = pa.nulls(len(values), pa.string())
    if spec.min is not None:
        reason = _reason(pc.less(values, spec.min), name, f"below min {spec.min}", shown)
    if spec.max is not None:
        high = _reason(pc.greater(values, spec.max), name, f"above max {spec.max}", shown)
        reason = pc.coalesce(reason, high)
    return reason


def _cast_categorical(
    name: str, raw: pa.ChunkedArray, spec: ColumnSpec
) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    values = text_values(raw)
    reason = pa.nulls(len(values), pa.string())
    if spec.values is not None:
        unknown = pc.invert(pc.is_in(values, value_set=pa.array(spec.values)))
        reason = _reason(unknown, name, "unknown category", values)
        values = pc.if_else(pc.is_null(reason), values, _NULL_STR)
    return values, reason


def _cast_boolean(
    name: str, raw: pa.ChunkedArray, spec: ColumnSpec
) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    if pa.types.is_boolean(raw.type):
        return raw, pa.nulls(len(raw), pa.string())
    text = pc.utf8_lower(text_values(raw))
    true, false = (
        pc.is_in(text, value_set=pa.array(_TRUE)),
        pc.is_in(text, value_set=pa.array(_FALSE)),
    )
    values = pc.if_else(true, True, pc.if_else(false, False, pa.scalar(None, pa.bool_())))
    bad = pc.and_(pc.is_valid(text), pc.is_null(values))
    return values, _reason(bad, name, "not a boolean", text)


def _cast_datetime(
    name: str, raw: pa.ChunkedArray, spec: ColumnSpec
) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    target = ARROW_TYPES["datetime"]
    if pa.types.is_timestamp(raw.type):
        values = raw if raw.type.tz else pc.assume_timezone(raw, "UTC")
        return pc.cast(values, target), pa.nulls(len(raw), pa.string())
    text = text_values(raw)
    parsed = pd.to_datetime(text.to_pandas(), errors="coerce", utc=True, format="ISO8601")
    values = pa.chunked_array([pa.Array.from_pandas(parsed, type=target)])
    bad = pc.and_(pc.is_valid(text), pc.is_null(values))
    return values, _reason(bad, name, "not an ISO 8601 datetime", text)


_CASTERS = {
    "numeric": _cast_numeric,
    "integer": _cast_numeric,
    "categorical": _cast_categorical,
    "text": _cast_categorical,
    "boolean": _cast_boolean,
    "datetime": _cast_datetime,
}


def _column(table: pa.Table, name: str) -> pa.ChunkedArray:
    """The raw column, or all nulls when a file lacks it (the null checks then apply)."""
    if name in table.column_names:
        col = table.column(name)
        return col if isinstance(col, pa.ChunkedArray) else pa.chunked_array([col])
    return pa.chunked_array([pa.nulls(table.num_rows, pa.string())])


def validate_table(
    table: pa.Table, columns: Mapping[str, ColumnSpec], label: str | None
) -> pa.Table:
    """Typed columns in declared order, the provenance columns present, and :data:`ERROR`.

    ERROR is null where the row is good and holds the row's first problem otherwise.
    An ERROR already set on input (a malformed line) is kept.
    """
    out: dict[str, pa.ChunkedArray] = {}
    if ERROR in table.column_names:
        error = pc.cast(table.column(ERROR), pa.string())
    else:
        error = pa.chunked_array([pa.nulls(table.num_rows, pa.string())])
    for name, spec in columns.items():
        values, reason = _CASTERS[spec.type](name, _column(table, name), spec)
        if not spec.nullable or name == label:
            what = "label" if name == label else "value"
            missing = pc.and_(pc.is_null(values), pc.is_null(reason))
            message = pa.scalar(f"{name}: missing {what} (column is not nullable)")
            reason = pc.coalesce(reason, pc.if_else(missing, message, _NULL_STR))
        error = pc.coalesce(error, reason)
        out[name] = values
    for name in PROVENANCE:
        if name in table.column_names:
            out[name] = table.column(name)
    out[ERROR] = error
    return pa.table(out)


def validate_frame(
    frame: pd.DataFrame, columns: Mapping[str, ColumnSpec], label: str | None = None
) -> pa.Table:
    """:func:`validate_table` for records that arrive as a DataFrame (serving, tests)."""
    arrays = {}
    for name in frame.columns:
        series = frame[name]
        if series.dtype == object and series.map(type).nunique() > 1:
            series = series.map(lambda v: v if v is None else str(v))  # mixed: judge as text
        arrays[str(name)] = pa.array(series, from_pandas=True)
    return validate_table(pa.table(arrays), columns, label)


def validate_records(
    records: Sequence[Mapping[str, Any]],
    columns: Mapping[str, ColumnSpec],
    label: str | None = None,
) -> pa.Table:
    """:func:`validate_table` for records as a request carries them (dicts), without a
    DataFrame in between: for one or two records, building and indexing the DataFrame cost
    more than validating. A column mixing types is judged as text, as in
    :func:`validate_frame`; a record without a column has a null there."""
    arrays = {}
    for name in columns:
        values = [record.get(name) for record in records]
        kinds = {type(v) for v in values if v is not None}
        if int in kinds and any(isinstance(v, int) and abs(v) > MAX_INTEGER for v in values):
            kinds.add(str)  # past 2**53 (400 digits, say): judged as text, then refused
        if kinds <= {int, float} and len(kinds) == 2:
            arrays[name] = pa.array(values, pa.float64())
        elif len(kinds) > 1:
            arrays[name] = pa.array([v if v is None else str(v) for v in values], pa.string())
        else:
            arrays[name] = pa.array(values, pa.string() if not kinds else None)
    return validate_table(pa.table(arrays), columns, label)


def first_error(typed: pa.Table) -> tuple[int, str] | None:
    """The first row :func:`validate_table` rejected, and why (None: every row is valid)."""
    errors = typed.column(ERROR)
    if errors.null_count == len(errors):
        return None
    listed = errors.to_pylist()
    first = next(i for i, e in enumerate(listed) if e is not None)
    return first, listed[first]


def error_kind(reason: str) -> str:
    """The reason without the offending value: ``age: below min 18.0`` for counting."""
    return reason.split(" ('", 1)[0]


# --------------------------------------------------------------------------- split


def _finalize(h: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: spreads every input bit over the whole word."""
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


def _column_keys(arr: pa.ChunkedArray) -> np.ndarray:
    """A uint64 per value, equal for equal values in any process (no Python hash())."""
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        encoded = pc.dictionary_encode(arr).combine_chunks()
        words = [
            int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(), "little")
            for v in encoded.dictionary.to_pylist()
        ]
        table = np.array([*words, 0x5BD1E995], dtype=np.uint64)  # last slot: null
        idx = encoded.indices.fill_null(len(words)).to_numpy(zero_copy_only=False)
        return table[idx]
    if pa.types.is_timestamp(arr.type) or pa.types.is_boolean(arr.type):
        arr = pc.cast(arr, pa.int64())
    values = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
    values = np.where(np.isnan(values), 1.2345e300, values)  # one key for every null
    return values.view(np.uint64)


def assign_split(
    table: pa.Table, columns: Sequence[str], valid_fraction: float, seed: int
) -> np.ndarray:
    """'train' or 'valid' per row from a hash of its values: deterministic, order-free.

    Identical rows always land in the same split, so duplicates cannot leak across it.
    """
    h = np.full(table.num_rows, np.uint64(seed & 0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for name in columns:
            h = _finalize(h ^ _column_keys(table.column(name)))
    bucket = (h % np.uint64(1_000_000)).astype(np.float64) / 1_000_000
    return np.where(bucket < valid_fraction, "valid", "train")
