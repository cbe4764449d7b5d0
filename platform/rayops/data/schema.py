"""Cast raw columns to their declared types and check them against the schema contract.

Works on pandas batches (one Ray Data block at a time). A row that breaks the contract is
kept, not dropped, with the first problem in :data:`ERROR_COLUMN`, so the caller can count
and quarantine it: nothing is lost silently.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from rayops.config import ColumnSpec
from rayops.errors import DataError

ERROR_COLUMN = "_rayops_error"
SPLIT_COLUMN = "_rayops_split"
PATH_COLUMN = "path"  # added by Ray Data's include_paths=True

_TRUE = {"true", "t", "yes", "y", "1", "1.0"}
_FALSE = {"false", "f", "no", "n", "0", "0.0"}
NULL_STRINGS = ["", "NA", "N/A", "n/a", "na", "null", "NULL", "None", "none", "NaN", "nan", "-"]


def _as_text(series: pd.Series) -> pd.Series:
    """Non-null values as stripped strings; nulls and null markers stay null."""
    text = series.astype("string").str.strip()
    return text.mask(text.isin(NULL_STRINGS))


def _cast_numeric(name: str, raw: pd.Series, spec: ColumnSpec) -> tuple[pd.Series, pd.Series]:
    text = _as_text(raw) if raw.dtype == object or pd.api.types.is_string_dtype(raw) else None
    if text is not None:
        values = pd.to_numeric(text, errors="coerce").astype("float64")
        bad = text.notna() & values.isna()
    else:
        values = pd.to_numeric(raw, errors="coerce").astype("float64")
        bad = pd.Series(False, index=raw.index)
    finite = np.isfinite(values.to_numpy(dtype="float64", na_value=np.nan))
    bad |= values.notna() & ~finite
    reason = pd.Series(pd.NA, index=raw.index, dtype="string")
    shown = (text if text is not None else raw.astype("string")).fillna("")
    reason = reason.mask(bad, name + ": not a finite number ('" + shown + "')")
    if spec.type == "integer":
        frac = values.notna() & ~bad & (values != values.round())
        reason = reason.mask(frac & reason.isna(), name + ": not an integer (" + shown + ")")
        bad |= frac
    values = values.mask(bad)
    if spec.min is not None:
        low = values < spec.min
        reason = reason.mask(low & reason.isna(), f"{name}: below min {spec.min} (" + shown + ")")
        values = values.mask(low)
    if spec.max is not None:
        high = values > spec.max
        reason = reason.mask(high & reason.isna(), f"{name}: above max {spec.max} (" + shown + ")")
        values = values.mask(high)
    return values, reason


def _cast_categorical(name: str, raw: pd.Series, spec: ColumnSpec) -> tuple[pd.Series, pd.Series]:
    values = _as_text(raw)
    reason = pd.Series(pd.NA, index=raw.index, dtype="string")
    if spec.values is not None:
        unknown = values.notna() & ~values.isin(spec.values)
        reason = reason.mask(unknown, name + ": unknown category ('" + values.fillna("") + "')")
        values = values.mask(unknown)
    return values.astype(object).where(values.notna(), None), reason


def _cast_boolean(name: str, raw: pd.Series, spec: ColumnSpec) -> tuple[pd.Series, pd.Series]:
    if pd.api.types.is_bool_dtype(raw):
        return raw.astype("float64"), pd.Series(pd.NA, index=raw.index, dtype="string")
    text = _as_text(raw).str.lower()
    values = pd.Series(np.nan, index=raw.index, dtype="float64")
    values = values.mask(text.isin(_TRUE), 1.0).mask(text.isin(_FALSE), 0.0)
    bad = text.notna() & values.isna()
    reason = pd.Series(pd.NA, index=raw.index, dtype="string")
    reason = reason.mask(bad, name + ": not a boolean ('" + text.fillna("") + "')")
    return values, reason


_CASTERS = {
    "numeric": _cast_numeric,
    "integer": _cast_numeric,
    "categorical": _cast_categorical,
    "boolean": _cast_boolean,
}


def validate_frame(
    frame: pd.DataFrame, columns: Mapping[str, ColumnSpec], label: str
) -> pd.DataFrame:
    """Typed columns in declared order plus :data:`ERROR_COLUMN` (null where the row is good).

    Numeric, integer and boolean columns come back as float64 with NaN for null; categorical
    columns as Python strings or None.
    """
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"declared column(s) {missing} are missing from the source data; "
            f"found columns: {sorted(map(str, frame.columns))}"
        )
    out: dict[str, pd.Series] = {}
    error = pd.Series(pd.NA, index=frame.index, dtype="string")
    for name, spec in columns.items():
        values, reason = _CASTERS[spec.type](name, frame[name], spec)
        raw_null = values.isna() & reason.isna()
        if not spec.nullable or name == label:
            what = "label" if name == label else "value"
            reason = reason.mask(raw_null, f"{name}: missing {what} (column is not nullable)")
        error = error.fillna(reason)
        out[name] = values
    result = pd.DataFrame(out, index=frame.index)
    if PATH_COLUMN in frame.columns:
        result[PATH_COLUMN] = frame[PATH_COLUMN].astype(str)
    result[ERROR_COLUMN] = error.astype(object).where(error.notna(), None)
    return result.reset_index(drop=True)


def error_kind(reason: str) -> str:
    """The reason without the offending value: ``age: below min 18.0`` for counting."""
    return reason.split(" (", 1)[0].split(" ('", 1)[0]


def assign_split(
    frame: pd.DataFrame, columns: list[str], valid_fraction: float, seed: int
) -> pd.Series:
    """'train' or 'valid' per row from a hash of its values: deterministic, order-free.

    Identical rows always land in the same split, so duplicates cannot leak across it.
    """
    key = f"{seed & 0xFFFFFFFFFFFF:016d}"[-16:]
    hashed = pd.util.hash_pandas_object(frame[columns], index=False, hash_key=key)
    bucket = (hashed.to_numpy() % np.uint64(1_000_000)).astype(np.float64) / 1_000_000
    return pd.Series(np.where(bucket < valid_fraction, "valid", "train"), index=frame.index)
