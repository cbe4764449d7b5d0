"""Reading raw files: provenance, malformed lines, unreadable files, globs, hive folders."""

import gzip

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from rayops.data.sources import FAILED, UNREADABLE, FileSource, read_file
from rayops.data.validate import ERROR, RAW, SOURCE_FILE, SOURCE_ROW
from rayops.errors import DataError
from rayops.storage import resolve

COLUMNS = ["a", "b"]


def _read(path, fmt):
    return read_file(pafs.LocalFileSystem(), fmt, {"path": str(path)}, COLUMNS).to_pylist()


def test_csv_rows_carry_file_and_line_and_malformed_lines_are_rows(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b,extra\n1,2,z\n3,4,5,6\n7,8,9\n")
    rows = _read(path, "csv")
    good = [r for r in rows if r.get(ERROR) is None]
    assert [(r["a"], r["b"], r[SOURCE_ROW]) for r in good] == [("1", "2", 2), ("7", "8", 4)]
    assert all(r[SOURCE_FILE] == str(path) for r in rows)
    (bad,) = [r for r in rows if r.get(ERROR)]
    assert bad[SOURCE_ROW] == 3 and bad[RAW] == "3,4,5,6"
    assert bad[ERROR] == "malformed line: expected 3 fields, got 4"


def test_csv_column_missing_from_file_arrives_as_nulls(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a\n1\n")
    assert _read(path, "csv")[0]["b"] is None


def test_truncated_gzip_is_one_unreadable_row(tmp_path):
    path = tmp_path / "x.csv.gz"
    path.write_bytes(gzip.compress(b"a,b\n" + b"1,2\n" * 5000)[:-40])
    (row,) = _read(path, "csv")
    assert row[ERROR].startswith(UNREADABLE) and row[SOURCE_FILE] == str(path)


def test_corrupt_parquet_is_one_unreadable_row(tmp_path):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), good)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (row,) = _read(bad, "parquet")
    assert row[ERROR].startswith(UNREADABLE)
    assert [r[SOURCE_ROW] for r in _read(good, "parquet")] == [1, 2]


def test_jsonl_with_mixed_types_and_a_broken_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1, "b": "x"}\n{"a": "two", "b": true}\n{broken\n\n[1, 2]\n')
    rows = _read(path, "json")
    assert [(r["a"], r["b"]) for r in rows[:2]] == [("1", "x"), ("two", "true")]
    assert rows[2][ERROR].startswith("malformed line") and rows[2][SOURCE_ROW] == 3
    assert rows[3][ERROR] == "malformed line: not a JSON object" and rows[3][SOURCE_ROW] == 5


def test_clean_jsonl_keeps_json_types(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1, "b": "x"}\n{"a": 2, "b": null}\n')
    rows = _read(path, "json")
    assert rows[0]["a"] == 1 and rows[1]["b"] is None and rows[1][SOURCE_ROW] == 2


def _tree(tmp_path):
    for day in ("2024-01-01", "2024-01-02"):
        folder = tmp_path / "raw" / f"day={day}"
        folder.mkdir(parents=True)
        (folder / "part-0.csv").write_text("a,b\n1,2\n")
        (folder / "_SUCCESS").write_text("")
    (tmp_path / "raw" / "notes.txt").write_text("not data")


def test_prefix_lists_data_files_with_hive_partitions(tmp_path):
    _tree(tmp_path)
    items = FileSource(resolve(str(tmp_path / "raw")), "csv").snapshot()
    assert [i["partitions"] for i in items] == [{"day": "2024-01-01"}, {"day": "2024-01-02"}]
    row = read_file(pafs.LocalFileSystem(), "csv", items[1], ["a", "day"]).to_pylist()[0]
    assert row["day"] == "2024-01-02"


def test_glob_and_single_file(tmp_path):
    _tree(tmp_path)
    glob = FileSource(resolve(str(tmp_path / "raw" / "day=*-02" / "*.csv")), "csv").snapshot()
    assert len(glob) == 1 and glob[0]["path"].endswith("day=2024-01-02/part-0.csv")
    single = FileSource(
        resolve(str(tmp_path / "raw" / "day=2024-01-01" / "part-0.csv")), "csv"
    ).snapshot()
    assert len(single) == 1 and single[0]["size"] > 0


def test_empty_source_says_what_it_looked_for(tmp_path):
    with pytest.raises(DataError, match=r"no parquet files \(.parquet, .pq\) at"):
        FileSource(resolve(str(tmp_path)), "parquet").snapshot()


class _Flaky:
    """The local disk, failing the first ``failures`` opens like a dropped connection."""

    def __init__(self, failures: int) -> None:
        self.failures, self.opens = failures, 0

    def open_input_stream(self, path, compression=None):
        self.opens += 1
        if self.opens <= self.failures:
            raise OSError("connection reset by peer")
        return pafs.LocalFileSystem().open_input_stream(path, compression=compression)


def test_a_raw_file_that_cannot_be_fetched_is_retried_then_failed_not_quarantined(
    tmp_path, monkeypatch
):
    """Storage failures are retried with backoff; one that outlasts the retries marks the
    file failed (read again next time), never 'unreadable'; bad content is unreadable."""
    monkeypatch.setattr("rayops.data.sources.FETCH_BACKOFF_S", 0.01)
    good = tmp_path / "good.csv"
    good.write_text("a\n1\n2\n")
    recovers = _Flaky(failures=2)
    table = read_file(recovers, "csv", {"path": str(good)}, ["a"])
    assert recovers.opens == 3 and table.column("a").to_pylist() == ["1", "2"]
    down = _Flaky(failures=99)
    table = read_file(down, "csv", {"path": str(good)}, ["a"], endpoint="http://s3:9000")
    assert down.opens == 3 and table.num_rows == 1
    reason = table.column(ERROR)[0].as_py()
    assert reason.startswith(FAILED) and "on endpoint http://s3:9000 after 3 attempts" in reason
    assert "connection reset by peer" in reason
    corrupt = tmp_path / "corrupt.csv.gz"
    corrupt.write_bytes(b"not gzip at all")
    table = read_file(pafs.LocalFileSystem(), "csv", {"path": str(corrupt)}, ["a"])
    assert table.num_rows == 1 and table.column(ERROR)[0].as_py().startswith(UNREADABLE)
