import json
import time

import pyarrow.compute as pc
from deltalake import DeltaTable

from rayops.serve.prediction_log import PredictionLog
from rayops.storage import resolve
from tests.helpers import wait_for

RECORD = {"age": 30, "contract": "month-to-month", "region": None}


def _rows(folder) -> list[dict]:
    return DeltaTable(str(folder)).to_pyarrow_table().sort_by("request_id").to_pylist()


def test_served_rows_reach_the_table_and_a_clean_close_writes_what_is_queued(tmp_path):
    log = PredictionLog(resolve(str(tmp_path / "log")), flush_interval_s=60)
    for i in range(3):
        log.record(
            f"req-{i}",
            "churn",
            "4",
            [RECORD, {**RECORD, "age": 40 + i}],
            [{"prediction": "yes"}, {"prediction": "no"}],
            2.5,
        )
    log.close()  # long before the 60 s flush: close writes the queue
    rows = _rows(tmp_path / "log")
    assert [r["request_id"] for r in rows] == ["req-0"] * 2 + ["req-1"] * 2 + ["req-2"] * 2
    assert json.loads(rows[0]["record"]) == RECORD or json.loads(rows[1]["record"]) == RECORD
    assert {json.loads(r["prediction"]) for r in rows} == {"yes", "no"}
    assert {(r["model_name"], r["model_version"], r["latency_ms"]) for r in rows} == {
        ("churn", "4", 2.5)
    }
    assert log.counts == {"sampled": 6, "written": 6}
    table = DeltaTable(str(tmp_path / "log"))
    assert table.metadata().partition_columns == ["date"]
    assert pc.unique(table.to_pyarrow_table()["date"]).to_pylist() == [rows[0]["date"]]


def test_half_a_full_queue_is_appended_without_waiting_for_the_interval(tmp_path):
    """Fewer, larger commits (each costs 15-50 ms of CPU, mostly fixed): the writer starts
    once half the queue waits, long before the interval."""
    log = PredictionLog(resolve(str(tmp_path / "log")), max_queue=40, flush_interval_s=60)
    for i in range(20):
        if i == 19:
            time.sleep(0.3)
            assert log.counts["written"] == 0  # 19 rows of 40: they wait for the interval
        log.record(f"r{i}", "churn", "1", [RECORD], [{"prediction": "no"}], 1.0)
    wait_for(lambda: log.counts["written"] == 20, timeout_s=30)
    assert len(_rows(tmp_path / "log")) == 20
    log.close()


class SlowStore(PredictionLog):
    def _write(self, *waiting) -> None:
        time.sleep(0.3)  # a store that answers slowly
        super()._write(*waiting)


def test_overload_drops_and_counts_and_never_blocks_a_request(tmp_path):
    log = SlowStore(
        resolve(str(tmp_path / "log")), max_queue=100, flush_rows=50, flush_interval_s=0.05
    )
    for i in range(5_000):
        log.record(f"r{i}", "churn", "1", [RECORD], [{"prediction": "no"}], 1.0)
    # A request never waits for the store: with the queue full its rows are dropped (a put
    # that waited would drop none). No clock here: a busy machine stalls any call.
    assert log.counts["dropped"] > 4_000
    log.close()
    assert log.counts["sampled"] + log.counts["dropped"] == 5_000
    assert log.counts["written"] == log.counts["sampled"] == len(_rows(tmp_path / "log"))


def test_sampling_and_a_store_that_fails(tmp_path):
    none = PredictionLog(resolve(str(tmp_path / "none")), sample_rate=0.0)
    none.record("r", "churn", "1", [RECORD], [{"prediction": "no"}], 1.0)
    none.close()
    assert none.counts["sampled"] == 0 and not (tmp_path / "none").exists()
    (tmp_path / "blocked").write_text("a file where the table's folder should be")
    failing = PredictionLog(resolve(str(tmp_path / "blocked" / "log")), flush_interval_s=0.05)
    failing.record("r", "churn", "1", [RECORD], [{"prediction": "no"}], 1.0)  # no raise
    time.sleep(0.5)
    failing.close(timeout_s=2)
    assert failing.counts["failed_writes"] >= 1 and failing.counts["written"] == 0


def test_labels_put_to_be_stored_are_in_the_table_when_their_future_completes(tmp_path):
    """What /feedback waits on before its 202: one commit for every sender waiting, and a
    store that fails tells each of them (nothing claimed stored that is not)."""
    from concurrent.futures import wait

    from rayops.errors import StorageError
    from rayops.serve.prediction_log import FEEDBACK_SCHEMA, AppendLog, feedback_row

    labels = AppendLog(
        resolve(str(tmp_path / "feedback")), FEEDBACK_SCHEMA, flush_interval_s=60
    )  # only a stored put wakes the writer
    futures = [
        labels.put_stored([feedback_row(f"r{i}", 0, "yes"), feedback_row(f"r{i}", 1, "no")])
        for i in range(3)
    ]
    wait(futures, timeout=30)
    assert [f.result() for f in futures] == [2, 2, 2]
    assert len(_rows(tmp_path / "feedback")) == 6  # stored before anyone was told so
    labels.close()
    (tmp_path / "blocked").write_text("a file where the table's folder should be")
    failing = AppendLog(
        resolve(str(tmp_path / "blocked" / "feedback")), FEEDBACK_SCHEMA, flush_interval_s=60
    )
    refused = failing.put_stored([feedback_row("r", 0, "yes")])
    wait([refused], timeout=30)
    assert isinstance(refused.exception(), StorageError)
    failing.close(timeout_s=2)
