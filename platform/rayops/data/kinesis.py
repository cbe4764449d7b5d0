"""A Kinesis data stream as an ingest source (``data.source: kinesis://STREAM``), read
exactly once into versioned tables with the guarantees of a Kafka topic
(:mod:`rayops.data.kafka`): shards are the partitions, sequence numbers the offsets.

Kinesis has no end offset to ask for, so planning reads each shard's new records once,
from after the sequence number the last committed version consumed (a shard never read:
its trim horizon) to the shard's tip, and pins the first and last sequence numbers it
saw; the read task, one per shard, reads that range again and stops at the pinned last
record (a retried task reads the same records, never past them). Planning's records are
not kept: each new record is fetched twice (two GetRecords passes), which at Kinesis'
2 MB/s per shard read limit halves the rate one ingest can drain a shard.

Resharding: every shard the stream lists is read, open or closed, so the records of a
parent closed by a split or merge are read to its end and its children from their start.

Retention: when the record a shard was consumed to has expired and the last committed
version planned longer ago than the stream's retention period, records after it may have
expired unread. Kinesis cannot say how many, so the ingest fails naming the shard and the
range, unless ``data.max_lost_messages`` is at least 1 (then the gap is recorded in the
manifest's ``ingest.partitions`` as ``expired_unread``). A stream idle for longer than its
retention period looks the same and stops the first ingest after it (fail closed).

Where: ``kinesis://STREAM``, with the region and endpoint from ``AWS_REGION`` (or
``AWS_DEFAULT_REGION``) and ``AWS_ENDPOINT_URL_KINESIS`` (or ``AWS_ENDPOINT_URL``), and
credentials from the AWS chain (environment, profile, instance role), never from the
YAML; ``kinesis://STREAM?region=eu-west-1&endpoint_url=http://127.0.0.1:5000`` names
them in the URI. The driver's region, endpoint and credentials go to the read tasks.
A malformed record is quarantined with its shard and sequence number (``source_file``
``STREAM/SHARD:SEQUENCE``: a sequence number is too long for the ``line`` column).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rayops.data.messages import (
    AvroDecoder,
    MessageSource,
    RetentionGap,
    SourceUnavailable,
    check_format,
)
from rayops.errors import DataError, one_line

logger = logging.getLogger(__name__)

SCHEME = "kinesis://"
TIMEOUT_S = 30.0  # planning or reading one shard: longer fails (read again next time)
PAGE = 10_000  # records per GetRecords call (Kinesis' maximum)
THROTTLED = {
    "ProvisionedThroughputExceededException",
    "LimitExceededException",
    "ThrottlingException",
    "KMSThrottlingException",
}


def _boto() -> tuple[Any, Any]:
    import boto3
    import botocore.exceptions

    return boto3, botocore.exceptions


@dataclass(frozen=True)
class KinesisSource(MessageSource):
    """One Kinesis data stream; items are its shards with planned sequence numbers."""

    stream: str
    fmt: str
    columns: tuple[str, ...]
    region: str | None = None
    endpoint_url: str | None = None
    credentials: dict[str, str] = field(default_factory=dict, repr=False)
    avro: AvroDecoder | None = field(default=None, repr=False)
    unit = "shard"

    @classmethod
    def parse(cls, uri: str, fmt: str, columns: Sequence[str]) -> KinesisSource:
        parts = urllib.parse.urlsplit(uri)
        stream = parts.netloc
        query = dict(urllib.parse.parse_qsl(parts.query))
        unknown = set(query) - {"region", "endpoint_url"}
        if not stream or parts.path.strip("/") or unknown:
            why = f" (unknown {', '.join(sorted(unknown))})" if unknown else ""
            raise DataError(
                f"data.source: {uri!r} is not kinesis://STREAM[?region=R&endpoint_url=URL]{why}"
            )
        check_format(fmt, "Kinesis")
        region = (
            query.get("region")
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
        )
        endpoint = (
            query.get("endpoint_url")
            or os.environ.get("AWS_ENDPOINT_URL_KINESIS")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        return cls(stream, fmt, tuple(columns), region, endpoint, _driver_credentials())

    @property
    def uri(self) -> str:  # type: ignore[override]
        return f"{SCHEME}{self.stream}"

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.stream

    def _client(self) -> Any:
        boto3, errors = _boto()
        from botocore.config import Config

        try:
            return boto3.client(
                "kinesis",
                region_name=self.region,
                endpoint_url=self.endpoint_url,
                **self.credentials,
                config=Config(
                    connect_timeout=5,
                    read_timeout=15,
                    retries={"mode": "standard", "max_attempts": 5},
                ),
            )
        except errors.NoRegionError:
            raise DataError(
                f"data.source: {self.uri} needs a region: set AWS_REGION or "
                "add ?region=... to the URI"
            ) from None

    @contextlib.contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        """Kinesis' errors as rayops': throttling and an endpoint that cannot be reached
        SourceUnavailable (tried again at the next poll), a missing stream named, any
        other a DataError naming the stream and ``what`` was being done."""
        _, errors = _boto()
        try:
            yield
        except errors.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in THROTTLED:
                raise SourceUnavailable(
                    f"data.source: {self.uri}: {what}: {code} (Kinesis refused for now)"
                ) from None
            if code == "ResourceNotFoundException":
                raise DataError(
                    f"data.source: Kinesis stream {self.stream!r} does not exist"
                    f"{'' if not self.endpoint_url else ' at ' + self.endpoint_url}"
                ) from None
            raise DataError(f"data.source: {self.uri}: {what}: {one_line(exc)}") from None
        except errors.BotoCoreError as exc:
            raise SourceUnavailable(
                f"data.source: cannot reach Kinesis for {self.uri}: {one_line(exc)}"
            ) from None

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        """One call about the stream (its name given), errors translated."""
        with self._translated(what):
            return fn(StreamName=self.stream, **kwargs)

    def snapshot(self) -> list[dict[str, Any]]:
        """Every shard the stream lists (open or closed), with the stream's retention."""
        client = self._client()
        summary = self._call("describe", client.describe_stream_summary)
        retention = float(summary["StreamDescriptionSummary"]["RetentionPeriodHours"])
        shards: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            if token is None:
                page = self._call("list shards", client.list_shards)
            else:  # a later page: named by its token alone
                with self._translated("list shards"):
                    page = client.list_shards(NextToken=token)
            shards += page["Shards"]
            token = page.get("NextToken")
            if not token:
                break
        planned_at = time.time()
        return [
            {
                "key": f"{self.stream}/{s['ShardId']}",
                "path": f"{self.stream}/{s['ShardId']}",
                "partition": s["ShardId"],
                "size": 0,
                "retention_h": retention,
                "planned_at": planned_at,
            }
            for s in shards
        ]

    def pending(
        self, consumed: Mapping[str, Mapping[str, Any]], items: list[dict[str, Any]], max_lost: int
    ) -> tuple[list[dict[str, Any]], int]:
        """The shards with records after what was consumed, each with the first and last
        sequence numbers to read and how many; a possible retention gap fails the plan
        unless ``max_lost`` >= 1. Kinesis cannot count expired records: 0 are counted."""
        client = self._client()
        last_planned = max((float(c.get("planned_at", 0)) for c in consumed.values()), default=None)
        todo, gaps = [], []
        for item in items:
            before = consumed.get(item["key"])
            after = None if before is None else str(before["last"])
            gap = None
            if (
                after is not None
                and last_planned is not None
                and expired_unread(last_planned, float(item["retention_h"]), time.time())
            ):
                gap = self._gap(client, item["partition"], after)
                if gap:
                    gaps.append(f"shard {item['partition']} {gap}")
            count, first, last, oldest = _scan(self, client, item["partition"], after)
            if count:
                todo.append(
                    {
                        **item,
                        "after": after,
                        "first": first,
                        "last": last,
                        "count": count,
                        "oldest": oldest,
                        **({"expired_unread": gap} if gap else {}),
                    }
                )
        if gaps and max_lost < 1:
            raise RetentionGap(
                f"records of Kinesis stream {self.stream!r} may have expired before they "
                f"were read ({'; '.join(gaps)}): Kinesis cannot say how many; nothing was "
                "committed. data.max_lost_messages >= 1 accepts the gap (recorded in the "
                "manifest)"
            )
        if gaps:
            logger.warning(
                "records of %s may have expired unread (%s): accepted by "
                "data.max_lost_messages (%d)",
                self.uri,
                "; ".join(gaps),
                max_lost,
            )
        return todo, 0

    def _gap(self, client: Any, shard: str, after: str) -> str | None:
        """The range that may have expired unread when the record at ``after`` is gone."""
        try:
            it = self._call(
                "find the consumed record",
                client.get_shard_iterator,
                ShardId=shard,
                ShardIteratorType="AT_SEQUENCE_NUMBER",
                StartingSequenceNumber=after,
            )["ShardIterator"]
            with self._translated("find the consumed record"):
                records = client.get_records(ShardIterator=it, Limit=1)["Records"]
        except SourceUnavailable:
            raise
        except DataError:
            records = []  # the sequence number is behind the trim horizon
        if records and records[0]["SequenceNumber"] == after:
            return None  # still there: so is everything after it
        return (
            f"after sequence number {after} (expired; the last ingest planned longer "
            "ago than the stream's retention period)"
        )

    def lag(self, todo: list[dict[str, Any]]) -> list[dict[str, Any]]:
        now = time.time()
        return [
            {
                "partition": i["partition"],
                "start": i["first"],
                "end": i["last"],
                "lag_messages": int(i["count"]),
                "lag_s": None
                if i["oldest"] is None
                else round(max(0.0, now - float(i["oldest"])), 3),
                **({"expired_unread": i["expired_unread"]} if "expired_unread" in i else {}),
            }
            for i in todo
        ]

    def describe(self, lag: Mapping[str, Any]) -> str:
        return f"shard {lag['partition']}: sequence numbers {lag['start']}..{lag['end']}"

    def transient(self) -> tuple[type[BaseException], ...]:
        _, errors = _boto()
        return (DataError, errors.BotoCoreError, errors.ClientError)

    def fetch(self, item: dict[str, Any]) -> list[tuple[int | str, bytes | None]]:
        """Every record of the item's shard from ``first`` to ``last`` (the planned
        range), or a DataError when the shard no longer holds it whole."""
        client = self._client()
        first, last = str(item["first"]), int(item["last"])
        it = _iterator(self, client, item["partition"], item.get("after"))
        out: list[tuple[int | str, bytes | None]] = []
        deadline = time.monotonic() + TIMEOUT_S
        while it is not None:
            page = client.get_records(ShardIterator=it, Limit=PAGE)
            for record in page["Records"]:
                if not out and record["SequenceNumber"] != first:
                    raise DataError(
                        f"records from sequence number {first} expired before they were read"
                    )
                if int(record["SequenceNumber"]) > last:
                    return out
                out.append((record["SequenceNumber"], record["Data"]))
            if out and int(out[-1][0]) >= last:
                return out
            it = page.get("NextShardIterator")
            if (
                not page["Records"] and page.get("MillisBehindLatest", 0) == 0
            ) or time.monotonic() > deadline:
                break
        raise DataError(
            f"shard {item['partition']} ended before sequence number {last}, "
            f"planned (read {len(out)} of {item['count']} records)"
        )


def expired_unread(last_planned: float, retention_h: float, now: float) -> bool:
    """Whether records may have expired unread since an ingest that planned at
    ``last_planned`` (epoch seconds) read a shard to its tip: only when that was longer
    ago than the retention period (anything newer is still there)."""
    return last_planned < now - retention_h * 3600.0


def _driver_credentials() -> dict[str, str]:
    """The AWS credentials the driver resolves (any of boto3's chain), frozen for the read
    tasks; none when the chain finds none (the tasks then use their own)."""
    boto3, _ = _boto()
    found = boto3.Session().get_credentials()
    if found is None:
        return {}
    frozen = found.get_frozen_credentials()
    out = {"aws_access_key_id": frozen.access_key, "aws_secret_access_key": frozen.secret_key}
    if frozen.token:
        out["aws_session_token"] = frozen.token
    return out


def _iterator(source: KinesisSource, client: Any, shard: str, after: str | None) -> Any:
    kind: dict[str, Any] = (
        {"ShardIteratorType": "TRIM_HORIZON"}
        if after is None
        else {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": after}
    )
    return source._call("get shard iterator", client.get_shard_iterator, ShardId=shard, **kind)[
        "ShardIterator"
    ]


def _scan(
    source: KinesisSource, client: Any, shard: str, after: str | None
) -> tuple[int, str | None, str | None, float | None]:
    """(how many, first and last sequence numbers, the first's arrival time) of the
    records after ``after`` (None: the trim horizon) up to the shard's tip."""
    _, errors = _boto()
    it = _iterator(source, client, shard, after)
    count, first, last, oldest = 0, None, None, None
    deadline = time.monotonic() + TIMEOUT_S
    while it is not None:
        try:
            page = client.get_records(ShardIterator=it, Limit=PAGE)
        except (errors.ClientError, errors.BotoCoreError) as exc:
            raise SourceUnavailable(
                f"data.source: {source.uri}: reading shard {shard}: {one_line(exc)}"
            ) from None
        records = page["Records"]
        if records:
            count += len(records)
            if first is None:
                first = records[0]["SequenceNumber"]
                arrived = records[0].get("ApproximateArrivalTimestamp")
                oldest = arrived.timestamp() if isinstance(arrived, dt.datetime) else None
            last = records[-1]["SequenceNumber"]
        it = page.get("NextShardIterator")
        if not records and page.get("MillisBehindLatest", 0) == 0:
            break
        if time.monotonic() > deadline:
            raise DataError(
                f"data.source: {source.uri}: shard {shard} still had records "
                f"after {TIMEOUT_S:.0f} s of planning ({count} so far)"
            )
    return count, first, last, oldest
