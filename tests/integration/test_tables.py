"""The curated table layer under stress, on a local folder and the moto S3 endpoint:
concurrent ingests, a write task killed and retried by Ray, files the store fails to
deliver, clean-up, another engine reading a version, and the metadata one ingest reads."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest
import ray.data
from ray.data.datasource import ReadTask

from rayops.data import ingest as ingest_module
from rayops.data.ingest import FilesFailed, file_source, ingest
from rayops.data.sources import FAILED, FileSource, _FilesDatasource
from rayops.data.table import CommitConflict
from rayops.data.versions import ROWS, dataset_root, latest_version
from rayops.storage import Location
from tests.helpers import ingest_at_once
from tests.integration.test_ingest import (
    GOOD_ROWS,
    HEADER,
    assert_accounting,
    counted_in_tables,
    make_config,
    raw_dir,
    store,  # noqa: F401  (the local/S3 fixture)
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def rows_with_ids(first: int, count: int) -> str:
    """CSV rows whose n column is a unique id, so duplicates and losses show."""
    return "".join(
        f"{i * 0.5},{i},{'ab'[i % 2]},{'yn'[i % 3 == 0]}\n" for i in range(first, first + count)
    )


def ids_in_table(version) -> list[int]:
    from deltalake import DeltaTable

    location = version.root.join(ROWS)
    table = DeltaTable(location.table_uri, storage_options=location.options or None)
    return sorted(table.to_pyarrow_table(columns=["n"]).column("n").to_pylist())


# --------------------------------------------------------------------------- concurrency


def test_two_ingests_planned_on_the_same_version_one_commits_the_other_conflicts(
    store,  # noqa: F811
    ray_start_4_cpus,
    monkeypatch,
):
    cfg = make_config(store)
    raw = raw_dir(cfg)
    raw.join("a.csv").write_bytes((HEADER + rows_with_ids(0, 40)).encode())
    ingest(cfg)
    raw.join("b.csv").write_bytes((HEADER + rows_with_ids(40, 40)).encode())
    # Ingest A stops right before its commit until ingest B, planned on the same version
    # (both see b.csv as new), has committed.
    a_may_commit, b_done = threading.Event(), threading.Event()
    commit = ingest_module.delta.commit
    outcome: dict[str, Any] = {}

    def held_commit(*args, **kwargs):
        if threading.current_thread().name == "ingest-a":
            a_may_commit.wait(120)
        return commit(*args, **kwargs)

    monkeypatch.setattr(ingest_module.delta, "commit", held_commit)
    write_part = ingest_module.write_part

    def a_waits_for_b(*args, **kwargs):
        result = write_part(*args, **kwargs)
        if threading.current_thread().name == "ingest-a":
            threading.Thread(target=run_b, name="ingest-b").start()
            b_done.wait(120)
            a_may_commit.set()
        return result

    def run_b() -> None:
        try:
            outcome["b"] = ingest(cfg)
        finally:
            b_done.set()

    def run_a() -> None:
        try:
            outcome["a"] = ingest(cfg)
        except Exception as exc:
            outcome["a"] = exc

    monkeypatch.setattr(ingest_module, "write_part", a_waits_for_b)
    a = threading.Thread(target=run_a, name="ingest-a")
    a.start()
    a.join(240)
    assert outcome["b"].version == 2
    assert isinstance(outcome["a"], CommitConflict), outcome["a"]
    assert "another ingest committed" in str(outcome["a"])
    latest = latest_version(cfg)
    assert latest.version == 2  # the loser's commit is nowhere
    assert ids_in_table(latest) == list(range(80))  # every row once
    assert_accounting(latest, 80)
    monkeypatch.undo()
    assert ingest(cfg).version == 2  # rerun: nothing new, nothing duplicated


def test_the_operate_loop_plans_again_after_losing_a_commit_race(
    store,  # noqa: F811
    ray_start_4_cpus,
    monkeypatch,
):
    """`ingest --watch` beside `rayops operate` (a documented pairing): the watch commits
    between the operator's plan and its commit; the operator's ingest step plans again
    instead of ending the loop."""
    from rayops.operate import Operator
    from rayops.operate.state import CycleState

    cfg = make_config(store).with_overrides({"operate.shadow.enabled": False})
    raw = raw_dir(cfg)
    raw.join("a.csv").write_bytes((HEADER + rows_with_ids(0, 40)).encode())
    ingest(cfg)
    raw.join("b.csv").write_bytes((HEADER + rows_with_ids(40, 40)).encode())
    write_part, raced = ingest_module.write_part, []

    def the_watch_commits_first(*args, **kwargs):
        result = write_part(*args, **kwargs)
        if not raced:
            raced.append(True)
            watch = threading.Thread(target=ingest, args=(cfg,))
            watch.start()
            watch.join(120)
        return result

    monkeypatch.setattr(ingest_module, "write_part", the_watch_commits_first)
    state = CycleState(cycle=1, step="ingest")
    assert Operator(cfg)._ingest(state) == "monitor"
    assert state.facts["dataset"].endswith("v000002")  # the watch's version; none of its own
    latest = latest_version(cfg)
    assert latest.version == 2 and ids_in_table(latest) == list(range(80))


def test_two_ingests_started_at_the_same_moment(store, ray_start_4_cpus):  # noqa: F811
    cfg = make_config(store)
    raw = raw_dir(cfg)
    for i in range(4):
        raw.join(f"{i}.csv").write_bytes((HEADER + rows_with_ids(i * 40, 40)).encode())
    outcomes = ingest_at_once(cfg)
    assert len(outcomes) == 2
    committed = [o for o in outcomes if not isinstance(o, Exception)]
    assert committed, outcomes  # at least one commits; the other commits or conflicts
    latest = latest_version(cfg)
    assert ids_in_table(latest) == list(range(160))
    assert_accounting(latest, 160)


# --------------------------------------------------------------------------- retried writes


class _KillOnce(_FilesDatasource):
    """Reads every file in one task whose worker process dies after the first file's rows
    were written, once (``marker``): Ray retries the task."""

    def __init__(self, marker: str, *args: Any) -> None:
        super().__init__(*args)
        self._marker = marker

    def get_read_tasks(self, parallelism: int, **kwargs: Any) -> list[ReadTask]:
        (task,) = super().get_read_tasks(1, **kwargs)
        marker, inner = self._marker, task.read_fn

        def read():
            for i, table in enumerate(inner()):
                if i == 1 and not os.path.exists(marker):
                    Path(marker).touch()
                    os._exit(1)  # the first file's rows are written by now
                yield table

        return [ReadTask(read, task.metadata)]


class _KillingSource(FileSource):
    def __init__(self, source: FileSource, marker: str) -> None:
        super().__init__(source.location, source.fmt)
        object.__setattr__(self, "marker", marker)

    def read(self, items, columns):
        return ray.data.read_datasource(
            _KillOnce(self.marker, self.location, self.fmt, list(items), list(columns)),
            override_num_blocks=1,
        )


def test_a_write_task_killed_and_retried_never_duplicates_rows(
    store,  # noqa: F811
    tmp_path,
    ray_start_4_cpus,
):
    cfg = make_config(store)
    raw = raw_dir(cfg)
    for i in range(3):
        raw.join(f"{i}.csv").write_bytes((HEADER + rows_with_ids(i * 40, 40)).encode())
    marker = tmp_path / "killed"
    context = ray.data.DataContext.get_current()
    block_size = context.target_max_block_size
    context.target_max_block_size = 512  # each file's rows leave the reader as a block
    try:
        version = ingest(cfg, _KillingSource(file_source(cfg), str(marker)))
    finally:
        context.target_max_block_size = block_size
    assert marker.exists()  # the worker did die
    on_disk = [i for i in dataset_root(cfg).join(ROWS).list_files() if i.path.endswith(".parquet")]
    committed = counted_in_tables(version)
    assert ids_in_table(version) == list(range(120))  # every row exactly once
    assert_accounting(version, 120)
    # The dead attempt's files are still on disk, named by no version.
    assert len(on_disk) > len(version.split_files("train")) + len(version.split_files("valid"))
    assert committed["train"] + committed["valid"] == 120


# --------------------------------------------------------------------------- failed reads


class _FlakyHandler(pafs.FileSystemHandler):
    """The local disk, except that reading a file named in ``{state}/fail`` raises a
    storage error while that file exists (state on disk: Ray workers see it too)."""

    def __init__(self, state: str) -> None:
        self.state, self.fs = state, pafs.LocalFileSystem()

    def _failing(self, path: str) -> bool:
        fail = Path(self.state, "fail")
        return fail.exists() and Path(path).name in fail.read_text().split()

    def open_input_stream(self, path):
        if self._failing(path):
            raise OSError(f"injected: connection reset while reading {path}")
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        if self._failing(path):
            raise OSError(f"injected: connection reset while reading {path}")
        return self.fs.open_input_file(path)

    def __eq__(self, other):
        return isinstance(other, _FlakyHandler) and other.state == self.state

    def __ne__(self, other):
        return not self == other

    def get_type_name(self):
        return "flaky"

    def normalize_path(self, path):
        return path

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("not supported")

    def delete_file(self, path):
        self.fs.delete_file(path)

    def move(self, src, dest):
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self.fs.copy_file(src, dest)

    def open_output_stream(self, path, metadata):
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.fs.open_append_stream(path, metadata=metadata)


def test_a_file_that_cannot_be_fetched_is_failed_not_consumed_and_read_next_time(
    tmp_path, ray_start_4_cpus, monkeypatch
):
    monkeypatch.setattr("rayops.data.sources.FETCH_BACKOFF_S", 0.01)
    cfg = make_config(
        {"root": str(tmp_path / "lake"), "endpoint_url": None, "tmp": tmp_path}, max_failed_files=1
    )
    raw = raw_dir(cfg)
    for i in range(3):
        raw.join(f"{i}.csv").write_bytes((HEADER + rows_with_ids(i * 40, 40)).encode())
    state = tmp_path / "flaky"
    state.mkdir()
    (state / "fail").write_text("1.csv")
    flaky = FileSource(
        Location(pafs.PyFileSystem(_FlakyHandler(str(state))), raw.path, raw.uri), "csv"
    )

    first = ingest(cfg, flaky)
    (failed,) = first.manifest.ingest.failed
    assert failed["path"].endswith("1.csv") and failed["reason"].startswith(FAILED)
    assert "after 3 attempts" in failed["reason"] and "injected" in failed["reason"]
    assert first.manifest.rows.read == 80  # counted neither as read nor quarantined
    assert sorted(Path(k).name for k in first.state()["consumed"]) == ["0.csv", "2.csv"]
    assert ids_in_table(first) == [*range(40), *range(80, 120)]

    (state / "fail").write_text("")  # the store recovers
    second = ingest(cfg, flaky)
    assert second.version == first.version + 1
    assert second.manifest.ingest.rows.read == 40  # only the failed file
    assert ids_in_table(second) == list(range(120))
    assert_accounting(second, 120)

    # Above the threshold nothing is committed and the error says why and what to do.
    raw.join("3.csv").write_bytes((HEADER + rows_with_ids(120, 40)).encode())
    raw.join("4.csv").write_bytes((HEADER + rows_with_ids(160, 40)).encode())
    (state / "fail").write_text("3.csv 4.csv")
    with pytest.raises(
        FilesFailed,
        match=r"2 of 2 file\(s\) could not be read .*"
        r"max_failed_files=1 allows 1\).*reads them again",
    ):
        ingest(cfg, flaky)
    assert latest_version(cfg).version == second.version


# --------------------------------------------------------------------------- clean-up


def test_clean_up_keeps_young_files_and_removes_old_unreferenced_ones(tmp_path, ray_start_4_cpus):
    cfg = make_config(
        {"root": str(tmp_path / "lake"), "endpoint_url": None, "tmp": tmp_path}, retention_hours=1
    )
    raw_dir(cfg).join("a.csv").write_bytes((HEADER + GOOD_ROWS).encode())
    version = ingest(cfg)
    folder = Path(dataset_root(cfg).join(ROWS).path, "rayops_split=train")
    young, old = folder / "part-young.parquet", folder / "part-old.parquet"
    for orphan in (young, old):  # files of ingests that failed or are still writing
        orphan.write_bytes(b"PAR1")
    two_hours_ago = time.time() - 2 * 3600
    os.utime(old, (two_hours_ago, two_hours_ago))
    ingest_module.clean_up(cfg, version)
    assert young.exists() and not old.exists()
    assert_accounting(version, 40)  # nothing the version needs was touched


def _age(folder: Path, days: float = 40) -> None:
    """Every file below ``folder`` last written ``days`` ago, and every remove action in its
    Delta logs dated then: what a month and more of history leaves."""
    then = time.time() - days * 86400
    for path in folder.rglob("*"):
        if path.suffix == ".json" and path.parent.name == "_delta_log":
            actions = [json.loads(line) for line in path.read_text().splitlines() if line]
            for action in actions:
                if "remove" in action:
                    action["remove"]["deletionTimestamp"] = int(then * 1000)
            path.write_text("".join(json.dumps(a) + "\n" for a in actions))
        if path.is_file():
            os.utime(path, (then, then))


def test_a_version_a_registered_model_trained_on_outlives_log_retention(tmp_path, ray_start_4_cpus):
    """The champion trained on v1; a month later the data was rebuilt (v1's files are
    superseded) and ten arrivals made checkpoints. v1 still reads back (delta-rs no longer
    deletes old log entries at a checkpoint; clean-up keeps the versions registered models
    trained on, and their files); once no registered model needs it, the log is bounded."""
    from rayops import tracking
    from rayops.data.versions import load_version

    cfg = make_config({"root": str(tmp_path / "lake"), "endpoint_url": None, "tmp": tmp_path})
    raw = raw_dir(cfg)
    raw.join("a.csv").write_bytes((HEADER + rows_with_ids(0, 40)).encode())
    first = ingest(cfg)
    trained_rows = ids_in_table(first)
    client = tracking.client(cfg.tracking)
    client.create_registered_model(cfg.model_name)
    client.create_model_version(
        cfg.model_name, source="file:///champion", tags={tracking.DATASET_TAG: first.id}
    )
    raw.join("a.csv").write_bytes((HEADER + rows_with_ids(1000, 40)).encode())  # replaced
    assert ingest(cfg).manifest.base is None  # v2 rebuilt: v1's files are removed there
    table = Path(dataset_root(cfg).path)
    _age(table)
    for i in range(9):  # nine arrivals: a checkpoint, and the clean-up at the tenth version
        raw.join(f"new-{i}.csv").write_bytes((HEADER + rows_with_ids(2000 + i * 40, 40)).encode())
        latest = ingest(cfg)
    _age(table)
    ingest_module.clean_up(cfg, latest)  # everything is old now: only v1 protects
    old = load_version(cfg, 1)
    assert old.manifest.rows == first.manifest.rows
    ids = sorted(
        old.table("train").column("n").to_pylist() + old.table("valid").column("n").to_pylist()
    )
    assert ids == trained_rows  # its data files, superseded a month ago, are still there
    assert load_version(cfg, latest.version).manifest.rows.read == 40 * 10

    client.delete_registered_model(cfg.model_name)  # no model needs v1 any more
    ingest_module.clean_up(cfg, latest)
    logs = sorted(p.name for p in (table / ROWS / "_delta_log").iterdir())
    assert logs[0].endswith(".checkpoint.parquet") and int(logs[0][:20]) > 1, logs  # bounded
    with pytest.raises(Exception):  # noqa: B017  (delta-rs or rayops: v1 is gone)
        load_version(cfg, 1).table("train")
    assert ids_in_table(load_version(cfg, latest.version)) == ids_in_table(latest)


# --------------------------------------------------------------------------- other engines

DUCKDB_QUERY = """
import json, sys
import duckdb
from deltalake import DeltaTable

uri, version, options = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
rows = DeltaTable(uri, version=version, storage_options=options or None).to_pyarrow_dataset()
counts = duckdb.sql(
    "SELECT rayops_split, count(*) AS n, count(DISTINCT _source_file) AS files "
    "FROM rows GROUP BY rayops_split ORDER BY rayops_split").fetchall()
info = DeltaTable(uri, storage_options=options or None).history()
manifest = next(json.loads(h["rayops.manifest"]) for h in info if h["version"] == version)
print(json.dumps({"counts": counts, "rows": manifest["rows"],
                  "modules": sorted(m for m in sys.modules if m.startswith("rayops"))}))
"""


def test_duckdb_reads_a_curated_version_without_rayops(store, ray_start_4_cpus):  # noqa: F811
    cfg = make_config(store)
    raw = raw_dir(cfg)
    raw.join("a.csv").write_bytes((HEADER + GOOD_ROWS + "oops,1,a,y\n").encode())
    first = ingest(cfg)
    raw.join("b.csv").write_bytes((HEADER + GOOD_ROWS).encode())
    ingest(cfg)
    location = first.root.join(ROWS)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", DUCKDB_QUERY, location.table_uri, "1", json.dumps(location.options)],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["modules"] == []  # rayops was never imported
    rows = first.manifest.rows
    assert seen["rows"] == rows.model_dump()
    assert dict((split, n) for split, n, _ in seen["counts"]) == {
        "train": rows.train,
        "valid": rows.valid,
    }
    assert rows.kept == 40 and rows.quarantine == 1


# --------------------------------------------------------------------------- bounded work

ARRIVALS = 21  # two checkpoints behind the last ingest: history it must not read


def test_the_metadata_one_ingest_reads_does_not_grow_with_history(
    s3_server, ray_start_4_cpus, tmp_path
):
    """Counted from the S3 endpoint's own request log: the log entries, checkpoints, log
    listings and state files one ingest GETs, after 10, ARRIVALS - 10 and ARRIVALS
    arrivals ingested one by one (about 20 s)."""
    bucket = s3_server.create_bucket()
    cfg = make_config(
        {"root": f"s3://{bucket}/lake", "endpoint_url": s3_server.url, "tmp": tmp_path}
    )
    raw = raw_dir(cfg)
    reads: dict[int, list[str]] = {}
    for i in range(ARRIVALS):
        raw.join(f"{i:03d}.csv").write_bytes((HEADER + rows_with_ids(i * 40, 40)).encode())
        before = s3_server.log_path.stat().st_size
        version = ingest(cfg)
        with open(s3_server.log_path) as log:
            log.seek(before)
            reads[i + 1] = [
                m.group(1)
                for m in re.finditer(
                    r'"(?:\x1b\[[0-9;]*m)*GET /[^ ]*?/curated/t/((?:rows|quarantine)/_delta_log/'
                    r"[^ ?&]+|state/[^ ?]+) HTTP",
                    log.read(),
                )
            ]
    assert version.version == ARRIVALS
    assert ids_in_table(version) == list(range(ARRIVALS * 40))
    # A checkpoint every 10 versions: an ingest reads the newest checkpoint and the log
    # entries after it, of both tables, and one state file, so the last ingest reads what
    # the one ten before it read (as far past a checkpoint), not more, and nothing older.
    last, same_phase, early = reads[ARRIVALS], reads[ARRIVALS - 10], reads[10]
    print(
        f"metadata GETs of ingest 10: {len(early)}, {ARRIVALS - 10}: {len(same_phase)}, "
        f"{ARRIVALS}: {len(last)}"
    )
    numbers = [
        int(m.group(1)) for p in last if (m := re.search(r"rows/_delta_log/(\d{20})\.json$", p))
    ]
    checkpoints = [
        int(m.group(1))
        for p in last
        if (m := re.search(r"rows/_delta_log/(\d{20})\.checkpoint", p))
    ]
    assert checkpoints and min(numbers) >= max(checkpoints) >= ARRIVALS - 10, last
    assert len(last) <= len(same_phase) + 2, (same_phase, last)
    assert len(last) <= len(early) + 2, (early, last)  # no more than after 10 arrivals
    # one state file (read in one or more ranges)
    assert len({p for p in last if p.startswith("state/") and p.endswith(".json")}) == 1
