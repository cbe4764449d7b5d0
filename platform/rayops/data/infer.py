"""Propose a schema contract from a sample of raw files (``rayops schema infer``).

The proposal is a starting point the user edits: types from the values seen, the label
non-nullable, id-like columns excluded. Every feature stays nullable, since a sample
without nulls proves nothing about the next file.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from rayops.data.sources import FileSource, read_file
from rayops.data.validate import ERROR, NUMBER_RE, text_values
from rayops.errors import DataError

_BOOLEAN_WORDS = {"true", "false", "yes", "no", "t", "f", "y", "n"}
MAX_CATEGORIES = 100
FIT = 0.95  # share of sampled values that must fit a type for it to be proposed
_DATETIME_RE = r"^\d{4}-\d{2}-\d{2}([T ][\d:.]+)?(Z|[+-][\d:]+)?$"


def sample(source: FileSource, rows: int) -> pa.Table:
    """Up to ``rows`` rows from the first files of the source (read on this machine)."""
    tables: list[pa.Table] = []
    problems: list[str] = []
    for item in source.snapshot():
        table = read_file(source.location.fs, source.fmt, item, columns=None)
        if ERROR in table.column_names:  # drop malformed lines and unreadable files
            problems += [str(e) for e in table.column(ERROR).drop_null().to_pylist()[:1]]
            table = table.filter(pc.is_null(table.column(ERROR)))
        tables.append(table)
        if sum(t.num_rows for t in tables) >= rows:
            break
    found = pa.concat_tables(tables, promote_options="permissive").slice(0, rows)
    if found.num_rows == 0:
        why = f": {problems[0]}" if problems else ""
        raise DataError(f"no readable {source.fmt} rows in {source.uri}{why}")
    return found


def infer_column(values: pa.ChunkedArray) -> dict[str, Any]:
    """The column spec that fits every non-null sampled value."""
    if pa.types.is_boolean(values.type):
        return {"type": "boolean"}
    if pa.types.is_integer(values.type):
        return {"type": "integer"}
    if pa.types.is_floating(values.type):
        return {"type": "numeric"}
    if pa.types.is_timestamp(values.type) or pa.types.is_date(values.type):
        return {"type": "datetime"}
    text = text_values(values).drop_null()
    if len(text) == 0:
        return {"type": "categorical"}

    def share(mask: pa.ChunkedArray) -> float:
        return float(pc.mean(pc.cast(mask, pa.float64())).as_py())

    # A type wins when nearly every value fits it: the few that do not are the malformed
    # values the contract should quarantine, not evidence of another type.
    if share(pc.is_in(pc.utf8_lower(text), value_set=pa.array(sorted(_BOOLEAN_WORDS)))) >= FIT:
        return {"type": "boolean"}
    numeric = pc.match_substring_regex(text, NUMBER_RE)
    if share(numeric) >= FIT:
        numbers = pc.cast(text.filter(numeric), pa.float64())
        integral = pc.all(pc.equal(numbers, pc.floor(numbers))).as_py()
        return {"type": "integer" if integral else "numeric"}
    if share(pc.match_substring_regex(text, _DATETIME_RE)) >= FIT:
        return {"type": "datetime"}
    distinct = len(pc.unique(text))
    return {"type": "categorical" if distinct <= MAX_CATEGORIES else "text"}


def _id_like(name: str, values: pa.ChunkedArray) -> bool:
    distinct = len(pc.unique(values.drop_null()))
    return distinct > 0.95 * max(len(values), 1) and (
        "id" in name.lower().split("_") or name.lower().endswith("id")
    )


def propose_config(
    source: FileSource,
    name: str,
    label: str | None,
    root: str,
    rows: int = 10_000,
    table: pa.Table | None = None,
) -> dict[str, Any]:
    """A pipeline config (as a dict) for the source, ready to be written as YAML (from
    ``table`` when the caller sampled the source already)."""
    table = sample(source, rows) if table is None else table
    names = [n for n in table.column_names if not n.startswith("_")]
    if label is not None and label not in names:
        raise DataError(
            f"--label {label!r} is not a column of {source.uri}; its columns: {', '.join(names)}"
        )
    columns = {n: infer_column(table.column(n)) for n in names}
    chosen = label if label is not None else names[-1]
    columns[chosen]["nullable"] = False
    numeric_label = columns[chosen]["type"] in ("numeric",) or (
        columns[chosen]["type"] == "integer" and len(pc.unique(table.column(chosen))) > 20
    )
    exclude = [n for n in names if n != chosen and _id_like(n, table.column(n))]
    return {
        "name": name,
        "storage": {"root": root},
        "data": {
            "source": source.uri,
            "format": source.fmt,
            "label": chosen,
            "task": "regression" if numeric_label else "classification",
            "exclude": exclude,
            "columns": columns,
        },
    }


MAX_SLICE_VALUES = 12  # a categorical with more values makes slices too small to judge


def proposed_checks(config: dict[str, Any], table: pa.Table) -> str:
    """Checks for ``config``'s data, as commented-out YAML for the user to keep or drop: a
    slice floor on each low-cardinality categorical feature, and an invariance check on
    each id-named feature (an id should change nothing); '' when none fits."""
    data = config["data"]
    label, excluded = data["label"], set(data["exclude"])
    features = [n for n in data["columns"] if n != label and n not in excluded]
    slices = [
        n
        for n in features
        if data["columns"][n]["type"] == "categorical"
        and 2 <= len(pc.unique(table.column(n).drop_null())) <= MAX_SLICE_VALUES
    ]
    ids = [n for n in features if "id" in n.lower().split("_") or n.lower().endswith("id")]
    if not slices and not ids:
        return ""
    lines = [
        "",
        "# Checks `rayops check` and the gate would run (docs/checks.md): keep",
        "# what holds for your data, drop the rest, add directional checks you expect.",
        "# checks:",
    ]
    if slices:
        lines.append("#   slices:")
        lines += [
            f"#     - {{column: {n}, relative_floor: 0.8}}   # no {n} far behind the whole"
            for n in slices
        ]
    if ids:
        lines.append("#   invariance:")
        lines += [
            f"#     - {{name: {n} changes nothing, columns: [{n}], perturb: shuffle}}" for n in ids
        ]
    return "\n".join(lines) + "\n"
