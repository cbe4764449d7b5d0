"""A Kafka source's planning and parsing, without a broker: what each partition reads
(from where the last version stopped to the planned end), the retention gap that fails an
ingest naming the lost range, and a message that is not a record quarantined with its
offset. Reading a real broker: tests/integration/test_kafka.py."""

import json

import pytest

from rayops.data.kafka import KafkaSource, client_settings, plan_offsets
from rayops.data.messages import RetentionGap, parse_messages
from rayops.data.sources import _as_text
from rayops.data.validate import ERROR, SOURCE_FILE, SOURCE_ROW
from rayops.errors import DataError


def _item(partition: int, low: int, end: int) -> dict:
    return {
        "key": f"ev/{partition}",
        "path": f"ev/{partition}",
        "partition": partition,
        "low": low,
        "end": end,
        "size": 0,
    }


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
    values = [
        (5, b'{"id": "a", "x": 1.5}'),
        (6, b"{not json"),
        (7, b"[1, 2]"),
        (8, None),
        (9, b'{"id": "b", "extra": true}'),
    ]
    table = parse_messages(values, "json", ["id", "x"], ["id", "x"], "ev/2").to_pylist()
    assert [(r[SOURCE_ROW], r["id"], r["x"]) for r in table if not r[ERROR]] == [
        (5, "a", "1.5"),
        (9, "b", None),
    ]
    bad = {r[SOURCE_ROW]: r[ERROR] for r in table if r[ERROR]}
    assert set(bad) == {6, 7, 8} and bad[7] == "malformed message: not a JSON object"
    assert {r[SOURCE_FILE] for r in table} == {"ev/2"}
    lines = parse_messages([(0, b"a,1.5"), (1, b"b,2,3")], "csv", ["x"], ["id", "x"], "ev/0")
    assert lines.column("x").to_pylist() == ["1.5", None]
    assert "expected one line of 2 fields, got 3" in lines.column(ERROR).to_pylist()[1]


def test_values_become_the_same_text_whichever_json_types_a_column_mixes():
    rows = [
        {"i": 1, "f": 2.0, "b": True, "s": "x", "m": 1, "o": {"k": [1]}, "n": None},
        {"i": 2**70, "f": 0.1, "b": False, "s": None, "m": "y", "o": None, "n": None},
        {"i": -3, "f": None, "b": None, "s": "7", "m": True, "o": [2], "n": None},
    ]
    columns = list(rows[0])
    values = [(i, json.dumps(r).encode()) for i, r in enumerate(rows)]
    table = parse_messages(values, "json", columns, columns, "ev/0")
    assert table.select(columns).to_pylist() == [{c: _as_text(r[c]) for c in columns} for r in rows]


def test_the_uri_and_client_settings():
    source = KafkaSource.parse("kafka://127.0.0.1:9092,127.0.0.1:9093/rides", "json", ["a"])
    assert source.servers == "127.0.0.1:9092,127.0.0.1:9093" and source.topic == "rides"
    assert source.uri == "kafka://127.0.0.1:9092,127.0.0.1:9093/rides"
    with pytest.raises(DataError, match="not kafka://HOST:PORT"):
        KafkaSource.parse("kafka://127.0.0.1:9092", "json", ["a"])
    with pytest.raises(DataError, match="data.format: 'parquet'"):
        KafkaSource.parse("kafka://h:1/t", "parquet", ["a"])
    assert client_settings(
        {
            "RAYOPS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "RAYOPS_KAFKA_SASL_PASSWORD": "s3cret",
            "HOME": "/root",
        }
    ) == {"security.protocol": "SASL_SSL", "sasl.password": "s3cret"}


def test_a_topic_created_again_is_refused_not_skipped():
    with pytest.raises(DataError, match="deleted and created again"):
        plan_offsets("ev", {"ev/0": {"end": 40}}, [_item(0, 0, 12)], max_lost=0)


def test_avro_messages_are_decoded_with_the_writers_schema_and_framing():
    import io

    import fastavro

    from rayops.data.messages import AvroDecoder

    schema = {
        "type": "record",
        "name": "Ride",
        "fields": [{"name": "id", "type": "string"}, {"name": "x", "type": ["null", "double"]}],
    }
    decoder = AvroDecoder.parse(json.dumps(schema).encode(), "confluent", "data.avro.schema")

    def framed(record, header=b"\x00\x00\x00\x00\x07"):
        out = io.BytesIO()
        fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
        return header + out.getvalue()

    values = [
        (0, framed({"id": "a", "x": 1.5})),
        (1, framed({"id": "b", "x": None})),
        (2, framed({"id": "c", "x": 2.0}, header=b"")),  # no framing
        (3, framed({"id": "d", "x": 1.0}) + b"\x01"),
        (4, b'{"id": "e"}'),
    ]
    table = parse_messages(values, "avro", ["id", "x"], ["id", "x"], "ev/0", decoder)
    assert [(r[SOURCE_ROW], r["id"], r["x"]) for r in table.to_pylist() if not r[ERROR]] == [
        (0, "a", "1.5"),
        (1, "b", None),
    ]
    bad = {r[SOURCE_ROW]: r[ERROR] for r in table.to_pylist() if r[ERROR]}
    assert set(bad) == {2, 3, 4} and "1 byte(s) after the Avro record" in bad[3], bad
    assert "not Confluent's Avro framing" in bad[4]
    bare = AvroDecoder.parse(json.dumps(schema).encode(), "bare", "s")
    assert bare.decode(framed({"id": "f", "x": None}, header=b"")) == {"id": "f", "x": None}
    with pytest.raises(DataError, match="data.avro.schema is not an Avro record schema"):
        AvroDecoder.parse(b'"string"', "bare", "data.avro.schema")
    with pytest.raises(DataError, match="is not an Avro schema"):
        AvroDecoder.parse(b'{"type": "record"', "bare", "data.avro.schema")


def test_watch_polls_again_when_the_broker_is_down_and_stops_on_a_retention_gap(monkeypatch):
    from types import SimpleNamespace

    from rayops.data import ingest as ingesting
    from rayops.data.messages import SourceUnavailable

    outcomes = [
        SourceUnavailable("cannot reach the Kafka cluster"),
        SimpleNamespace(version=1),
        RetentionGap("12 message(s) expired"),
    ]
    calls = []

    def polled(cfg):
        calls.append(cfg)
        outcome = outcomes[len(calls) - 1]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(ingesting, "ingest", polled)
    seen = []
    with pytest.raises(RetentionGap):  # never skipped: the watch ends, naming the loss
        ingesting.watch("cfg", interval_s=0.01, polls=5, on_version=seen.append)
    assert len(calls) == 3 and [v.version for v in seen] == [1]
