"""A Kinesis source without a stream: its URI (region and endpoint in the query, nothing
else), and when records may have expired unread. Reading a real stream:
tests/integration/test_kinesis.py."""

import pytest

from rayops.data.kinesis import KinesisSource, expired_unread
from rayops.errors import DataError


def test_the_uri_names_the_stream_and_optionally_region_and_endpoint(monkeypatch):
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL_KINESIS", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    plain = KinesisSource.parse("kinesis://plays", "json", ["a"])
    assert (plain.stream, plain.region, plain.endpoint_url, plain.uri) == (
        "plays",
        "eu-west-1",
        None,
        "kinesis://plays",
    )
    local = KinesisSource.parse(
        "kinesis://plays?region=us-east-2&endpoint_url=http://127.0.0.1:5000", "csv", ["a"]
    )
    assert (local.region, local.endpoint_url) == ("us-east-2", "http://127.0.0.1:5000")
    assert "secret" not in repr(local).lower()  # credentials are never shown
    for bad, match in [
        ("kinesis://", "is not kinesis://STREAM"),
        ("kinesis://a/b", "is not kinesis://STREAM"),
        ("kinesis://a?token=x", "unknown token"),
    ]:
        with pytest.raises(DataError, match=match):
            KinesisSource.parse(bad, "json", ["a"])
    with pytest.raises(DataError, match="data.format: 'parquet'"):
        KinesisSource.parse("kinesis://a", "parquet", ["a"])


def test_records_may_have_expired_only_when_the_last_plan_is_older_than_retention():
    hour = 3600.0
    assert not expired_unread(last_planned=100 * hour, retention_h=24, now=123 * hour)
    assert expired_unread(last_planned=100 * hour, retention_h=24, now=125 * hour)
