"""Ingest against real storage (a local folder and the moto S3 endpoint) on a real Ray
cluster: quarantine, unreadable and failed files, versions as Delta table versions,
incremental arrivals, crash safety, concurrent commits, retried write tasks."""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from deltalake import DeltaTable
from mlflow import MlflowClient
from typer.testing import CliRunner

from rayops.cli import app
from rayops.config import PipelineConfig, validate_config
from rayops.data import ingest as ingest_module
from rayops.data.ingest import SourceFilesVanished, file_source, ingest, watch
from rayops.data.sources import UNREADABLE
from rayops.data.versions import QUARANTINE, ROWS, dataset_root, latest_version, load_version
from rayops.errors import DataError
from rayops.storage import Location

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HEADER = "x,n,c,y\n"
GOOD_ROWS = "".join(f"{i * 0.5},{i},{'ab'[i % 2]},{'yn'[i % 3 == 0]}\n" for i in range(40))


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, s3_endpoint) -> dict:
    if request.param == "local":
        return {"root": str(tmp_path / "lake"), "endpoint_url": None, "tmp": tmp_path}
    import uuid

    import boto3

    bucket = f"ingest-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return {"root": f"s3://{bucket}/lake", "endpoint_url": s3_endpoint, "tmp": tmp_path}


def make_config(store: dict, fmt: str = "csv", **data: object) -> PipelineConfig:
    columns = {
        "x": {"type": "numeric", "min": 0},
        "n": {"type": "integer", "nullable": False},
        "c": {"type": "categorical", "values": ["a", "b"]},
        "y": {"type": "categorical", "nullable": False},
    }
    return validate_config(
        {
            "name": "t",
            "storage": {"root": store["root"], "endpoint_url": store["endpoint_url"]},
            "data": {
                "source": "raw",
                "format": fmt,
                "label": "y",
                "task": "classification",
                "columns": columns,
                "valid_fraction": 0.3,
                "max_quarantine_fraction": 0.5,
                **data,
            },
            "tracking": {"uri": f"sqlite:///{store['tmp']}/mlflow/mlflow.db"},
        }
    )


def raw_dir(cfg: PipelineConfig) -> Location:
    return file_source(cfg).location


def delta_table(version, name: str = ROWS, at: int | None = None) -> DeltaTable:
    """The dataset's table read by deltalake itself, not through rayops."""
    location = version.root.join(name)
    return DeltaTable(location.table_uri, version=at, storage_options=location.options or None)


def counted_in_tables(version) -> dict[str, int]:
    """Rows per split as deltalake reads the committed tables (rayops not involved)."""
    rows = delta_table(version, at=version.version).to_pyarrow_table().to_pandas()
    quarantine = delta_table(version, QUARANTINE).to_pyarrow_table().to_pandas()
    mine = quarantine[quarantine["dataset_version"].between(version.base, version.version)]
    counts = rows["rayops_split"].value_counts().to_dict()
    return {
        "train": counts.get("train", 0),
        "valid": counts.get("valid", 0),
        "quarantine": len(mine),
    }


def assert_accounting(version, lines_in_files: int | None = None) -> None:
    """rows read = kept + quarantined, in the manifest and in the tables deltalake reads,
    and (when given) against the data lines counted in the source files."""
    rows = version.manifest.rows
    assert rows.read == rows.train + rows.valid + rows.quarantine
    assert sum(version.manifest.quarantine_reasons.values()) == rows.quarantine
    counted = counted_in_tables(version)
    unreadable = len(version.manifest.unreadable)
    assert counted == {
        "train": rows.train,
        "valid": rows.valid,
        "quarantine": rows.quarantine + unreadable,
    }
    if lines_in_files is not None:
        assert rows.read == lines_in_files


def data_lines(raw: Location) -> int:
    """Data lines of the CSV files under ``raw`` (headers and blank lines not counted)."""
    total = 0
    for info in raw.list_files():
        text = Location(raw.fs, info.path, info.path).read_bytes()
        if info.path.endswith(".gz"):
            text = gzip.decompress(text)
        total += sum(1 for line in text.decode().splitlines()[1:] if line.strip())
    return total


def test_corrupt_file_is_quarantined_whole_and_the_rest_is_kept(store, ray_start_4_cpus):
    cfg = make_config(store)
    raw = raw_dir(cfg)
    raw.join("good.csv").write_bytes((HEADER + GOOD_ROWS).encode())
    raw.join("good2.csv.gz").write_bytes(gzip.compress((HEADER + GOOD_ROWS).encode()))
    raw.join("truncated.csv.gz").write_bytes(
        gzip.compress((HEADER + GOOD_ROWS * 50).encode())[:-60]
    )
    version = ingest(cfg)
    assert_accounting(version)
    assert version.manifest.rows.read == 80
    (bad,) = version.manifest.unreadable
    assert bad["path"].endswith("truncated.csv.gz") and bad["reason"].startswith(UNREADABLE)
    quarantined = version.quarantine().to_pandas()
    assert quarantined["reason"].str.startswith(UNREADABLE).sum() == 1


def test_corrupt_parquet_among_good_ones(tmp_path, ray_start_4_cpus):
    store = {"root": str(tmp_path / "lake"), "endpoint_url": None, "tmp": tmp_path}
    cfg = make_config(store, fmt="parquet")
    raw = raw_dir(cfg)
    table = pa.table(
        {
            "x": [float(i) for i in range(-1, 29)],
            "n": list(range(30)),
            "c": ["a", "b", "a"] * 10,
            "y": ["y", "n"] * 15,
        }
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    raw.join("good.parquet").write_bytes(buf.getvalue())
    raw.join("corrupt.parquet").write_bytes(buf.getvalue()[:40] + b"\x00" * 64)
    version = ingest(cfg)
    assert_accounting(version)
    assert version.manifest.rows.read == 30
    assert version.manifest.quarantine_reasons == {"x: below min 0.0": 1}
    assert version.manifest.unreadable[0]["path"].endswith("corrupt.parquet")


def test_every_kind_of_violation_is_quarantined_with_file_line_and_reason(
    tmp_path, ray_start_4_cpus
):
    store = {"root": str(tmp_path / "lake"), "endpoint_url": None, "tmp": tmp_path}
    cfg = make_config(store)
    bad = (
        "abc,1,a,y\n"  # line 42: x not a number
        "-3,1,a,y\n"  # 43: below min
        "1,1.5,a,y\n"  # 44: not an integer
        "1,,a,y\n"  # 45: null in a non-nullable column
        "1,1,zz,y\n"  # 46: unknown category
        "1,1,a,\n"  # 47: missing label
        "1,1,a,y,extra\n"  # 48: malformed line
        ",7,,n\n"
    )  # 49: nullable nulls: kept
    raw_dir(cfg).join("data.csv").write_bytes((HEADER + GOOD_ROWS + bad).encode())
    version = ingest(cfg)
    assert_accounting(version)
    assert version.manifest.quarantine_reasons == {
        "x: not a finite number": 1,
        "x: below min 0.0": 1,
        "n: not an integer": 1,
        "n: missing value (column is not nullable)": 1,
        "c: unknown category": 1,
        "y: missing label (column is not nullable)": 1,
        "malformed line: expected 4 fields, got 5": 1,
    }
    rows = version.manifest.rows
    assert rows.read == 48 and rows.kept == 41
    assert_accounting(version, data_lines(raw_dir(cfg)))
    quarantined = version.quarantine().to_pandas().set_index("line")
    assert sorted(quarantined.index) == list(range(42, 49))
    assert quarantined.loc[48, "raw"] == "1,1,a,y,extra"
    assert quarantined.loc[46, "reason"] == "c: unknown category ('zz')"
    assert '"c": "zz"' in quarantined.loc[46, "raw"]
    assert set(quarantined["source_file"]) == {raw_dir(cfg).join("data.csv").path}
    config_file = tmp_path / "t.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    shown = CliRunner().invoke(app, ["quarantine", str(config_file), "--limit", "3"])
    assert shown.exit_code == 0, shown.output
    assert "t/v000001: 7 quarantined row(s), 0 unreadable file(s)" in shown.output
    assert len(shown.output.strip().splitlines()) == 4 and "data.csv:4" in shown.output
    kept = version.read("train").union(version.read("valid")).to_pandas()
    null_row = kept[kept["_source_row"] == 49].iloc[0]
    assert null_row["n"] == 7 and pd.isna(null_row["c"]) and pd.isna(null_row["x"])


def test_new_files_make_a_new_version_that_includes_them(store, ray_start_4_cpus):
    cfg = make_config(store)
    raw = raw_dir(cfg)
    raw.join("day1.csv").write_bytes((HEADER + GOOD_ROWS).encode())
    first = ingest(cfg)
    raw.join("day2.csv").write_bytes((HEADER + GOOD_ROWS.replace(",a,", ",b,")).encode())
    second = ingest(cfg)
    assert (first.version, second.version) == (1, 2)
    assert_accounting(second, data_lines(raw))
    assert second.manifest.rows.read == 80
    assert second.manifest.ingest.rows.read == 40  # only day2 was read
    assert sorted(Path(k).name for k in second.state()["consumed"]) == ["day1.csv", "day2.csv"]
    # Time travel: version 1 reads back as it was, through rayops and through deltalake.
    old = load_version(cfg, 1)
    assert old.manifest.rows.read == 40
    assert len(old.table("train")) + len(old.table("valid")) == 40 - old.manifest.rows.quarantine
    assert delta_table(second, at=1).to_pyarrow_table().num_rows == len(old.table("train")) + len(
        old.table("valid")
    )
    assert (
        second.manifest.profile["c"]["frequencies"]["b"]
        > first.manifest.profile["c"]["frequencies"]["b"]
    )
    with pytest.raises(DataError, match="has no version 9; versions: 1 to 2"):
        load_version(cfg, 9)


def test_a_vanished_source_file_never_silently_shrinks_the_dataset(tmp_path, ray_start_4_cpus):
    """A consumed raw file expires (a lifecycle rule): the next ingest stops, committing
    nothing, unless data.vanished_files says to keep its rows or to rebuild without them."""
    store = {"root": str(tmp_path / "lake"), "endpoint_url": None, "tmp": tmp_path}
    cfg = make_config(store)
    raw = raw_dir(cfg)
    raw.join("day1.csv").write_bytes((HEADER + GOOD_ROWS).encode())
    raw.join("day2.csv").write_bytes((HEADER + GOOD_ROWS.replace(",a,", ",b,")).encode())
    first = ingest(cfg)
    kept = first.manifest.rows.kept
    os.remove(raw.join("day1.csv").path)
    raw.join("day3.csv").write_bytes((HEADER + GOOD_ROWS).encode())
    with pytest.raises(
        SourceFilesVanished,
        match=r"1 source file\(s\) that t/v000001 "
        r"consumed are gone .*day1\.csv.*nothing "
        r"was committed.*vanished_files: keep",
    ):
        ingest(cfg)
    assert latest_version(cfg).version == 1
    keep = cfg.with_overrides({"data.vanished_files": "keep"})
    second = ingest(keep)  # day3 appended, day1's rows kept; no rebuild for the setting
    assert second.version == 2 and second.manifest.ingest.rows.read == 40
    assert second.manifest.rows.kept > kept
    drop = cfg.with_overrides({"data.vanished_files": "drop"})
    raw.join("day4.csv").write_bytes((HEADER + GOOD_ROWS).encode())
    third = ingest(drop)  # rebuilt from day2, day3, day4
    assert third.manifest.ingest.rows.read == 120 and third.manifest.base is None


def test_rerun_on_unchanged_input_reuses_the_version(tmp_path, ray_start_4_cpus):
    store = {"root": str(tmp_path / "lake"), "endpoint_url": None, "tmp": tmp_path}
    cfg = make_config(store)
    raw_dir(cfg).join("a.csv").write_bytes((HEADER + GOOD_ROWS).encode())
    first = ingest(cfg)
    again = ingest(cfg)
    assert again.id == first.id and delta_table(again).version() == 1
    runs = MlflowClient(cfg.tracking.uri).search_runs(
        [MlflowClient(cfg.tracking.uri).get_experiment_by_name("t").experiment_id],
        "tags.`rayops.kind` = 'ingest'",
    )
    assert len(runs) == 1
    assert runs[0].data.metrics["rows_read"] == 40 and runs[0].data.metrics["files_read"] == 1
    # An ingest whose logging failed after the commit is logged by the next one.
    client = MlflowClient(cfg.tracking.uri)
    client.delete_run(runs[0].info.run_id)
    assert ingest(cfg).id == first.id
    relogged = client.search_runs([runs[0].info.experiment_id], "tags.`rayops.kind` = 'ingest'")
    assert len(relogged) == 1 and relogged[0].info.run_id != runs[0].info.run_id
    assert relogged[0].data.tags["rayops.dataset_version"] == first.id
    assert relogged[0].data.metrics["rows_read"] == 40


def test_crash_between_data_write_and_commit_leaves_nothing_visible(
    store, ray_start_4_cpus, monkeypatch
):
    cfg = make_config(store)
    raw_dir(cfg).join("a.csv").write_bytes((HEADER + GOOD_ROWS).encode())

    def crash(*args, **kwargs):
        raise RuntimeError("injected crash before commit")

    monkeypatch.setattr(ingest_module.delta, "commit", crash)
    with pytest.raises(RuntimeError, match="injected crash"):
        ingest(cfg)
    root = dataset_root(cfg)
    written = [i for i in root.join(ROWS).list_files() if i.path.endswith(".parquet")]
    assert written  # the files are there, but no version names them
    assert latest_version(cfg) is None
    with pytest.raises(DataError, match="no committed version"):
        load_version(cfg)
    monkeypatch.undo()
    version = ingest(cfg)
    assert version.version == 1
    assert_accounting(version, 40)
    # The crashed ingest's files are younger than the retention window: clean-up keeps them.
    ingest_module.clean_up(cfg, version)
    assert all(root.join(ROWS).child(i.path).exists() for i in written)


def test_too_many_bad_rows_fail_and_commit_nothing(tmp_path, ray_start_4_cpus):
    store = {"root": str(tmp_path / "lake"), "endpoint_url": None, "tmp": tmp_path}
    cfg = make_config(store, max_quarantine_fraction=0.1)
    bad = "".join("oops,1,a,y\n" for _ in range(10))
    raw_dir(cfg).join("a.csv").write_bytes((HEADER + GOOD_ROWS + bad).encode())
    with pytest.raises(DataError, match=r"10 of 50 rows \(20.0%\).*max_quarantine_fraction"):
        ingest(cfg)
    assert latest_version(cfg) is None
    assert delta_table_rows(cfg) == 0


def delta_table_rows(cfg: PipelineConfig) -> int:
    location = dataset_root(cfg).join(ROWS)
    if not DeltaTable.is_deltatable(location.table_uri, location.options or None):
        return 0
    return (
        DeltaTable(location.table_uri, storage_options=location.options or None)
        .to_pyarrow_table()
        .num_rows
    )


def test_hive_partitioned_parquet_with_dates_and_jsonl(tmp_path, ray_start_4_cpus):
    store = {"root": str(tmp_path / "lake"), "endpoint_url": None, "tmp": tmp_path}
    columns = {
        "x": {"type": "numeric"},
        "when": {"type": "datetime", "expand": ["month"]},
        "region": {"type": "categorical", "values": ["eu", "us"]},
        "y": {"type": "boolean", "nullable": False},
    }
    cfg = validate_config(
        {
            **make_config(store, fmt="parquet").model_dump(mode="json"),
            "data": {
                "source": "raw",
                "format": "parquet",
                "label": "y",
                "task": "classification",
                "columns": columns,
                "max_quarantine_fraction": 0.5,
            },
        }
    )
    raw = raw_dir(cfg)
    for region in ("eu", "us"):
        buf = io.BytesIO()
        pq.write_table(
            pa.table(
                {
                    "x": [1.0, 2.0, 3.0, 4.0],
                    "when": ["2024-01-05T10:00:00", "2024-02-01T00:00:00Z", "2024-03-01", "soon"],
                    "y": [True, False, True, False],
                }
            ),
            buf,
        )
        raw.join(f"region={region}", "data.parquet").write_bytes(buf.getvalue())
    version = ingest(cfg)
    assert_accounting(version)
    assert version.manifest.rows.read == 8
    assert version.manifest.quarantine_reasons == {"when: not an ISO 8601 datetime": 2}
    assert set(version.manifest.profile["region"]["frequencies"]) == {"eu", "us"}
    assert "when.month" in version.preprocessor.output_columns

    json_cfg = cfg.with_overrides(
        {"data.format": "json", "data.source": "raw-json", "data.dataset": "t-json"}
    )
    lines = [
        '{"x": 1, "when": "2024-01-01", "region": "eu", "y": true}',
        '{"x": "2.5", "when": "2024-01-02", "region": "us", "y": "false"}',
        '{"x": 3, "when": null, "region": "eu", "y": 1}',
        "not json",
    ]
    raw_dir(json_cfg).join("a.jsonl").write_bytes("\n".join(lines * 3).encode())
    json_version = ingest(json_cfg)
    assert_accounting(json_version)
    assert json_version.manifest.rows.read == 12
    assert json_version.manifest.quarantine_reasons == {"malformed line: Expecting value": 3}


def test_watch_ingests_each_arrival(tmp_path, ray_start_4_cpus):
    store = {"root": str(tmp_path / "lake"), "endpoint_url": None, "tmp": tmp_path}
    cfg = make_config(store)
    raw = raw_dir(cfg)
    raw.join("0.csv").write_bytes((HEADER + GOOD_ROWS).encode())
    seen = []

    def arrived(version) -> None:
        seen.append(version.manifest.rows.read)
        raw.join(f"{len(seen)}.csv").write_bytes((HEADER + GOOD_ROWS).encode())

    watch(cfg, interval_s=0.1, polls=3, on_version=arrived)
    assert seen == [40, 80, 120]
