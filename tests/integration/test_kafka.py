"""A Kafka topic ingested into versioned tables, exactly once, against a real broker (the
Tansu binary, tests/integration/conftest.py) read by Ray Data tasks in other processes:
every message's id lands in the table once across ingests, a malformed message is
quarantined with its partition and offset, an ingest with nothing new commits nothing, one
that dies before its commit is read again, two ingests planned against the same version
commit once, and the stream demo ingests every event it produced."""

from __future__ import annotations

import json

import pytest
import ray
import ray.data
import requests

from rayops import tracking
from rayops.config import validate_config
from rayops.data.ingest import ingest, ingest_retrying, source_of
from rayops.data.kafka import KafkaSource
from tests.helpers import (
    fresh_tracking_store,
    ingest_at_once,
    ingest_dying_before_commit,
    killing_once,
    wait_for,
)

pytestmark = [pytest.mark.integration]


def _rides(start: int, count: int, partitions: int = 3) -> list[tuple[int, bytes]]:
    """Rides ``start..start+count-1`` as JSON messages, ride n on partition n % 3."""
    return [
        (
            n % partitions,
            json.dumps(
                {
                    "ride_id": n,
                    "distance_km": 1 + n % 17 / 2,
                    "zone": f"Z{n % 4}",
                    "tipped": "yes" if n % 3 else "no",
                }
            ).encode(),
        )
        for n in range(start, start + count)
    ]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory, kafka_broker, ray_start_4_cpus):
    """Only the required sections: the topic, its message format and the schema."""
    tmp = tmp_path_factory.mktemp("kafka")
    fresh_tracking_store(tmp / "mlflow.db")
    topic = kafka_broker.create_topic("rides", 3)
    return validate_config(
        {
            "name": "rides",
            "storage": {"root": str(tmp / "lake")},
            "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db"},
            "data": {
                "source": f"kafka://{kafka_broker.servers}/{topic}",
                "format": "json",
                "label": "tipped",
                "task": "classification",
                "columns": {
                    "ride_id": {"type": "integer", "nullable": False},
                    "distance_km": {"type": "numeric", "min": 0},
                    "zone": {"type": "categorical"},
                    "tipped": {"type": "categorical", "nullable": False},
                },
            },
        }
    )


def _ids(version) -> list[int]:
    return sorted(
        version.table("train").column("ride_id").to_pylist()
        + version.table("valid").column("ride_id").to_pylist()
    )


def test_messages_land_once_across_ingests_and_a_bad_one_is_quarantined(cfg, kafka_broker):
    kafka_broker.produce("rides", [*_rides(0, 300), (1, b'{"ride_id": 300, "distan')])
    first = ingest(cfg)
    rows = first.manifest.rows
    assert rows.read == 301 and rows.quarantine == 1 and rows.train + rows.valid == 300
    bad = first.quarantine().to_pylist()  # where: the topic's partition and offset
    assert len(bad) == 1 and bad[0]["source_file"] == "rides/1", bad
    assert bad[0]["line"] == 100 and "malformed message" in bad[0]["reason"], bad
    ends = {k: v["end"] for k, v in first.state()["consumed"].items()}
    assert ends == {"rides/0": 100, "rides/1": 101, "rides/2": 100}  # the whole batches

    kafka_broker.produce("rides", _rides(300, 200))  # one batch a partition
    second = ingest(cfg)
    assert second.version == first.version + 1 and second.manifest.rows.read == 500 + 1
    assert second.manifest.ingest.rows.read == 200
    assert _ids(second) == list(range(500))  # every message once
    assert ingest(cfg).version == second.version  # nothing new: no commit
    # how far behind the topic each partition was: in the manifest and in MLflow
    lag = {p["partition"]: p for p in second.manifest.ingest.partitions}
    assert {p: (q["start"], q["end"], q["lag_messages"]) for p, q in lag.items()} == {
        0: (100, 167, 67),
        1: (101, 168, 67),
        2: (100, 166, 66),
    }
    assert all(0 <= q["lag_s"] < 120 for q in lag.values()), lag
    (run_id,) = tracking.runs_tagged(
        cfg.tracking,
        cfg.experiment_name,
        {tracking.KIND_TAG: "ingest", tracking.DATASET_TAG: second.id},
    )
    logged = tracking.client(cfg.tracking).get_run(run_id).data.metrics
    assert logged["lag_messages"] == 200 and logged["lag_messages.p1"] == 67
    assert logged["lost_messages"] == 0 and logged["lag_s"] == max(q["lag_s"] for q in lag.values())
    # ... and as Prometheus gauges of Ray's metrics export (0: nothing new since)
    port = ray._private.worker.global_worker.node.metrics_export_port

    def exported() -> bool:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        return (
            "rayops_ingest_lag_messages{" in text
            and 'topic="rides"' in text
            and "rayops_ingest_lag_seconds{" in text
        )

    wait_for(exported, 60, what="the lag gauges")


def test_an_ingest_that_dies_before_its_commit_is_read_again(cfg, kafka_broker, monkeypatch):
    """What a driver killed before the commit leaves: rows written, never committed, and
    its offsets with them; the next ingest reads the same messages."""
    before = ingest(cfg)
    kafka_broker.produce("rides", _rides(500, 30))
    ingest_dying_before_commit(cfg, monkeypatch)
    again = ingest(cfg)
    assert again.version == before.version + 1 and again.manifest.ingest.rows.read == 30
    assert _ids(again) == list(range(530))


def test_a_read_task_killed_and_retried_by_ray_reads_its_range_once(cfg, kafka_broker, tmp_path):
    before = ingest(cfg)
    kafka_broker.produce("rides", _rides(530, 30))
    marker = tmp_path / "killed"
    after = ingest(cfg, killing_once(source_of(cfg), marker))
    assert marker.exists()  # a worker did die mid-ingest
    assert after.version == before.version + 1 and after.manifest.ingest.rows.read == 30
    assert _ids(after) == list(range(560))


def test_two_ingests_planned_together_commit_once(cfg, kafka_broker):
    before = ingest(cfg)
    kafka_broker.produce("rides", _rides(560, 30))
    outcomes = ingest_at_once(cfg)
    assert any(not isinstance(o, Exception) for o in outcomes), outcomes
    latest = ingest_retrying(cfg)
    assert latest.version >= before.version + 1
    assert _ids(latest) == list(range(590)), "a message was lost or read twice"


def test_a_topic_that_does_not_exist_is_named(cfg, kafka_broker):
    from rayops.errors import DataError

    source = KafkaSource.parse(f"kafka://{kafka_broker.servers}/nope", "json", ["a"])
    with pytest.raises(DataError, match="topic 'nope'"):
        source.snapshot()


@pytest.mark.parametrize("workload", ["classification", "forecasting"])
def test_the_stream_demo_ingests_what_it_produces(
    workload, tmp_path, monkeypatch, capsys, ray_start_4_cpus
):
    from rayops.demo.streaming import STREAMS, run_stream_demo

    monkeypatch.chdir(tmp_path)
    fresh_tracking_store(tmp_path / "mlflow.db")
    run_stream_demo(
        seconds=2,
        rate=1000,
        interval_s=1.0,
        seed=3,
        overrides=[f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"],
        workload=workload,
    )
    shown = capsys.readouterr().out
    dataset = STREAMS[workload].dataset
    assert f"{dataset}/v000001: read " in shown and "behind the topic: p0 " in shown
    assert f"read {STREAMS[workload].backlog + 2000:,} (each message once)" in shown, shown
