"""A Kafka source's planning and parsing, without a broker: what each partition reads
(from where the last version stopped to the planned end), the retention gap that fails an
ingest naming the lost range, and a message that is not a record quarantined with its
offset. Reading a real broker: tests/integration/test_kafka.py."""

import pytest

from rayops.data.kafka import (
    KafkaSource,
    RetentionGap,
    client_settings,
    parse_messages,
    plan_offsets,
)
from rayops.data.validate import ERROR, SOURCE_FILE, SOURCE_ROW
from rayops.errors import DataError


def _item(partition: int, low: int, end: int) -> dict:
    return {"key": f"ev/{partition}", "path": f"ev/{partition}", "partition": partition,
            "low": low, "end": end, "size": 0}


def test_each_partition_reads_from_where_the_last_version_stopped():
    consumed = {"ev/0": {"end": 40}, "ev/1": {"end": 7}}
    items = [_item(0, 0, 55), _item(1, 0, 7), _item(2, 3, 9)]  # 2: new since, 1: no news
    todo, lost = plan_offsets("ev", consumed, items, max_lost=0)
    assert [(t["partition"], t["start"], t["end"]) for t in todo] == [(0, 40, 55), (2, 3, 9)]
    assert lost == 0


def test_expired_offsets_fail_naming_the_range_unless_allowed():
    consumed = {"ev/0": {"end": 40}}
    with pytest.raises(RetentionGap, match=r"10 message\(s\).*partition 0 offsets 40\.\.49"):
        plan_offsets("ev", consumed, [_item(0, 50, 60)], max_lost=9)
    todo, lost = plan_offsets("ev", consumed, [_item(0, 50, 60)], max_lost=10)
    assert lost == 10 and todo[0]["start"] == 50


def test_a_message_that_is_not_a_record_is_quarantined_with_its_offset():
    values = [(5, b'{"id": "a", "x": 1.5}'), (6, b"{not json"), (7, b"[1, 2]"), (8, None),
              (9, b'{"id": "b", "extra": true}')]
    table = parse_messages(values, "json", ["id", "x"], ["id", "x"], "ev/2").to_pylist()
    assert [(r[SOURCE_ROW], r["id"], r["x"]) for r in table if not r[ERROR]] == [
        (5, "a", "1.5"), (9, "b", None)]
    bad = {r[SOURCE_ROW]: r[ERROR] for r in table if r[ERROR]}
    assert set(bad) == {6, 7, 8} and bad[7] == "malformed message: not a JSON object"
    assert {r[SOURCE_FILE] for r in table} == {"ev/2"}
    lines = parse_messages([(0, b"a,1.5"), (1, b"b,2,3")], "csv", ["x"], ["id", "x"], "ev/0")
    assert lines.column("x").to_pylist() == ["1.5", None]
    assert "expected one line of 2 fields, got 3" in lines.column(ERROR).to_pylist()[1]


def test_the_uri_and_client_settings():
    source = KafkaSource.parse("kafka://127.0.0.1:9092,127.0.0.1:9093/rides", "json", ["a"])
    assert source.servers == "127.0.0.1:9092,127.0.0.1:9093" and source.topic == "rides"
    assert source.uri == "kafka://127.0.0.1:9092,127.0.0.1:9093/rides"
    with pytest.raises(DataError, match="not kafka://HOST:PORT"):
        KafkaSource.parse("kafka://127.0.0.1:9092", "json", ["a"])
    with pytest.raises(DataError, match="data.format: 'parquet'"):
        KafkaSource.parse("kafka://h:1/t", "parquet", ["a"])
    assert client_settings({"RAYOPS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                            "RAYOPS_KAFKA_SASL_PASSWORD": "s3cret", "HOME": "/root"}) == {
        "security.protocol": "SASL_SSL", "sasl.password": "s3cret"}


def test_a_topic_created_again_is_refused_not_skipped():
    with pytest.raises(DataError, match="deleted and created again"):
        plan_offsets("ev", {"ev/0": {"end": 40}}, [_item(0, 0, 12)], max_lost=0)
