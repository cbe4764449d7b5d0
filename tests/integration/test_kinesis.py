"""A Kinesis data stream ingested into versioned tables, exactly once, against a real
Kinesis API (moto's server, the session's S3 endpoint, which serves Kinesis too) read by
Ray Data tasks in other processes: every record's id lands in the table once across
ingests, a shard split, a read task killed and retried, a driver that dies before its
commit and two ingests planned together, counted against the stream read independently;
a malformed record is quarantined with its shard and sequence number."""

from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path

import boto3
import pytest

from rayops.config import validate_config
from rayops.data.ingest import ingest, ingest_retrying, source_of
from tests.helpers import (
    fresh_tracking_store,
    ingest_at_once,
    ingest_dying_before_commit,
    killing_once,
)

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def stream(s3_endpoint):
    """A new stream of 2 shards: (its client, its name)."""
    client = boto3.client("kinesis", endpoint_url=s3_endpoint)
    name = f"rides-{uuid.uuid4().hex[:6]}"
    client.create_stream(StreamName=name, ShardCount=2)
    return client, name


@pytest.fixture(scope="module")
def cfg(tmp_path_factory, stream, s3_endpoint, ray_start_4_cpus):
    """Only the required sections: the stream (with its endpoint), the format, the schema."""
    tmp = tmp_path_factory.mktemp("kinesis")
    fresh_tracking_store(tmp / "mlflow.db")
    return validate_config(
        {
            "name": "rides",
            "storage": {"root": str(tmp / "lake")},
            "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db"},
            "data": {
                "source": f"kinesis://{stream[1]}?endpoint_url={s3_endpoint}",
                "format": "json",
                "label": "tipped",
                "task": "classification",
                "columns": {
                    "ride_id": {"type": "integer", "nullable": False},
                    "distance_km": {"type": "numeric", "min": 0},
                    "tipped": {"type": "categorical", "nullable": False},
                },
            },
        }
    )


def _put(stream, start: int, count: int, extra: list[bytes] = ()) -> None:
    client, name = stream
    values = [
        json.dumps(
            {"ride_id": n, "distance_km": 1 + n % 17 / 2, "tipped": "yes" if n % 3 else "no"}
        ).encode()
        for n in range(start, start + count)
    ] + list(extra)
    for i in range(0, len(values), 500):
        client.put_records(
            StreamName=name,
            Records=[
                {"Data": v, "PartitionKey": str(start + i + j)}
                for j, v in enumerate(values[i : i + 500])
            ],
        )


def _in_stream(stream) -> list[int]:
    """Every ride id the stream holds, read independently of rayops (every shard)."""
    client, name = stream
    ids = []
    for shard in client.list_shards(StreamName=name)["Shards"]:
        it = client.get_shard_iterator(
            StreamName=name, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while it:
            page = client.get_records(ShardIterator=it, Limit=10_000)
            for record in page["Records"]:
                with contextlib.suppress(ValueError):  # the malformed record
                    ids.append(json.loads(record["Data"])["ride_id"])
            it = page.get("NextShardIterator") if page["Records"] else None
    return sorted(ids)


def _ids(version) -> list[int]:
    return sorted(
        version.table("train").column("ride_id").to_pylist()
        + version.table("valid").column("ride_id").to_pylist()
    )


def test_records_land_once_across_ingests_and_a_split(cfg, stream):
    _put(stream, 0, 300, [b'{"ride_id": 300, "distan'])
    first = ingest(cfg)
    rows = first.manifest.rows
    assert rows.read == 301 and rows.quarantine == 1 and rows.train + rows.valid == 300
    (bad,) = first.quarantine().to_pylist()  # where: the shard and the sequence number
    assert bad["source_file"].startswith(f"{stream[1]}/shardId-") and ":" in bad["source_file"]
    assert bad["line"] is None and "malformed message" in bad["reason"], bad
    lag = first.manifest.ingest.partitions
    assert sum(p["lag_messages"] for p in lag) == 301 and all(p["lag_s"] >= 0 for p in lag)

    client, name = stream  # split a shard: its children are read as well
    shard = client.list_shards(StreamName=name)["Shards"][0]
    keys = shard["HashKeyRange"]
    client.split_shard(
        StreamName=name,
        ShardToSplit=shard["ShardId"],
        NewStartingHashKey=str((int(keys["StartingHashKey"]) + int(keys["EndingHashKey"])) // 2),
    )
    _put(stream, 300, 200)
    second = ingest(cfg)
    assert second.version == first.version + 1 and second.manifest.ingest.rows.read == 200
    assert _ids(second) == list(range(500)) == _in_stream(stream)
    assert len(second.state()["consumed"]) >= 2
    assert ingest(cfg).version == second.version  # nothing new: no commit


def test_a_killed_read_task_a_dead_driver_and_two_ingests_lose_and_repeat_nothing(
    cfg, stream, tmp_path, monkeypatch
):
    before = ingest(cfg)
    _put(stream, 500, 30)
    marker = tmp_path / "killed"
    after = ingest(cfg, killing_once(source_of(cfg), marker))
    assert marker.exists()  # a worker did die mid-ingest; Ray ran its task again
    assert after.version == before.version + 1 and after.manifest.ingest.rows.read == 30

    _put(stream, 530, 30)
    ingest_dying_before_commit(cfg, monkeypatch)
    again = ingest(cfg)
    assert again.version == after.version + 1 and again.manifest.ingest.rows.read == 30

    _put(stream, 560, 30)
    outcomes = ingest_at_once(cfg)
    assert any(not isinstance(o, Exception) for o in outcomes), outcomes
    assert _ids(ingest_retrying(cfg)) == list(range(590)) == _in_stream(stream)


def test_avro_records_decoded_in_the_read_tasks(cfg, stream, s3_endpoint):
    """Confluent-framed Avro records, the schema a file in the store: one malformed record
    is quarantined, the rest land typed."""
    import io

    import fastavro

    client, _ = stream
    name = f"avro-{uuid.uuid4().hex[:6]}"
    client.create_stream(StreamName=name, ShardCount=1)
    schema = {
        "type": "record",
        "name": "Ride",
        "fields": [
            {"name": "ride_id", "type": "long"},
            {"name": "distance_km", "type": "double"},
            {"name": "tipped", "type": "string"},
        ],
    }
    root = cfg.storage.root
    (Path(root) / "schemas").mkdir(parents=True, exist_ok=True)
    (Path(root) / "schemas" / "ride.avsc").write_text(json.dumps(schema))

    def framed(n: int) -> bytes:
        out = io.BytesIO(b"\x00\x00\x00\x00\x01")
        out.seek(5)
        fastavro.schemaless_writer(
            out,
            fastavro.parse_schema(schema),
            {"ride_id": n, "distance_km": n / 10, "tipped": "yes" if n % 2 else "no"},
        )
        return out.getvalue()

    client.put_records(
        StreamName=name,
        Records=[{"Data": framed(n), "PartitionKey": str(n)} for n in range(40)]
        + [{"Data": b"\x00\x00\x00\x00\x01\xff", "PartitionKey": "x"}],
    )
    avro_cfg = validate_config(
        {
            **cfg.model_dump(mode="json", by_alias=True),
            "data": {
                **cfg.data.model_dump(mode="json", by_alias=True),
                "dataset": "avro",
                "source": f"kinesis://{name}?endpoint_url={s3_endpoint}",
                "format": "avro",
                "avro": {"schema": "schemas/ride.avsc"},
            },
        }
    )
    version = ingest(avro_cfg)
    assert version.manifest.ingest.rows.read == 41 and version.manifest.rows.quarantine == 1
    assert _ids(version) == list(range(40))
    assert "not a record of the Avro schema" in version.quarantine().to_pylist()[0]["reason"]
