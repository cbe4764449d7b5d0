"""A Kafka topic as an ingest source (``data.source: kafka://HOST:PORT/TOPIC``), read
exactly once into versioned tables.

Each ingest plans its offsets once: per partition, from where the last committed version
stopped (a partition never read: its earliest retained offset) to the end found at
planning, pinned, so a read task that Ray retries reads the same messages and never past
them. The ends are what the ingest's commit records as consumed: rows and offsets land in
one Delta commit (the version's state file, named in its manifest), so a crash before the
commit reads the same offsets again and one after it never does; two ingests planned
against the same version commit once (the same conflict rule as files).

Offsets an earlier version stopped at that retention removed before they were read are a
*retention gap*: the ingest fails naming the lost range, unless ``data.max_lost_messages``
allows that many (counted in the manifest's ``ingest.lost_messages``, never silent).

Read tasks, one per partition, are our own (confluent-kafka, as Ray's ``read_kafka``): Ray
2.60's reader clamps a pinned end to the high watermark it reads again inside each task,
and quietly starts at the earliest offset when the planned start has expired; both would
break the accounting above. The end is found by reading the partition's last batch, not
from the high watermark alone: the Tansu broker the tests run reports the last batch's
base offset + 1 (1 after one batch of 100 messages), which would leave messages unread.

Each message value is one record: a JSON object (``data.format: json``) or a CSV line of
the declared columns in their order (``csv``); a value that is neither is quarantined with
its partition and offset (``_source_file`` ``topic/partition``, ``_source_row`` the
offset). Client settings a real cluster needs (SASL, TLS) come from ``RAYOPS_KAFKA_*``
environment variables, never from the YAML: ``RAYOPS_KAFKA_SASL_PASSWORD`` sets
``sasl.password``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
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

SCHEME = "kafka://"
ENV_PREFIX = "RAYOPS_KAFKA_"
TIMEOUT_S = 15.0  # metadata and watermark queries; a read waiting this long for its next
# message, before its planned end, fails (the partition is read again next time)
QUIET_S = 1.0  # at planning, no message for this long after the last batch: its end
ENDS_S = 2.0  # ... and never longer than this (a live topic keeps sending: the end is then
# the last message seen, which is there)


def client_settings(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """librdkafka settings from ``RAYOPS_KAFKA_*`` variables: the rest of the name,
    lower-cased, ``_`` for ``.`` (``RAYOPS_KAFKA_SECURITY_PROTOCOL=SASL_SSL``)."""
    env = os.environ if env is None else env
    return {
        k[len(ENV_PREFIX) :].lower().replace("_", "."): v
        for k, v in env.items()
        if k.startswith(ENV_PREFIX) and len(k) > len(ENV_PREFIX)
    }


def _kafka() -> Any:
    try:
        import confluent_kafka
    except ImportError:  # a dependency: only a broken install lacks it
        raise DataError(
            "data.source is a Kafka topic but confluent-kafka is not "
            "installed: pip install confluent-kafka"
        ) from None
    return confluent_kafka


@dataclass(frozen=True)
class KafkaSource(MessageSource):
    """One topic of a Kafka cluster; items are its partitions with planned offsets."""

    servers: str
    topic: str
    fmt: str
    columns: tuple[str, ...]  # the declared columns, in order: a CSV message's fields
    settings: dict[str, str] = field(default_factory=dict, repr=False)
    avro: AvroDecoder | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, uri: str, fmt: str, columns: Sequence[str]) -> KafkaSource:
        rest = uri[len(SCHEME) :]
        servers, _, topic = rest.partition("/")
        if not servers or not topic or "/" in topic:
            raise DataError(f"data.source: {uri!r} is not kafka://HOST:PORT[,HOST:PORT]/TOPIC")
        check_format(fmt, "Kafka")
        return cls(servers, topic, fmt, tuple(columns), client_settings())

    @property
    def uri(self) -> str:  # type: ignore[override]
        return f"{SCHEME}{self.servers}/{self.topic}"

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.topic

    def describe(self, lag: Mapping[str, Any]) -> str:
        return f"partition {lag['partition']}: offsets {lag['start']}..{lag['end'] - 1}"

    def transient(self) -> tuple[type[BaseException], ...]:
        return (DataError, _kafka().KafkaException)

    def fetch(self, item: dict[str, Any]) -> list[tuple[int | str, bytes | None]]:
        return _fetch(self, item)  # type: ignore[return-value]

    def _consumer(self) -> Any:
        kafka = _kafka()
        return kafka.Consumer(
            {
                "bootstrap.servers": self.servers,
                "group.id": "rayops",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "error",
                **self.settings,
            }
        )

    def snapshot(self) -> list[dict[str, Any]]:
        """Every partition with its earliest retained offset (``low``) and its end now."""
        kafka = _kafka()
        consumer = self._consumer()
        try:
            try:
                meta = consumer.list_topics(self.topic, timeout=TIMEOUT_S)
            except kafka.KafkaException as exc:
                raise SourceUnavailable(
                    f"data.source: cannot reach the Kafka cluster at "
                    f"{self.servers}: {one_line(exc)}"
                ) from None
            topic = meta.topics.get(self.topic)
            if topic is None or topic.error is not None or not topic.partitions:
                why = topic.error if topic is not None and topic.error else "no partitions"
                raise DataError(f"data.source: topic {self.topic!r} at {self.servers}: {why}")
            marks = {
                p: consumer.get_watermark_offsets(
                    kafka.TopicPartition(self.topic, p), timeout=TIMEOUT_S
                )
                for p in sorted(topic.partitions)
            }
            ends = _ends(consumer, kafka, self.topic, marks)
        finally:
            consumer.close()
        return [
            {
                "key": f"{self.topic}/{p}",
                "path": f"{self.topic}/{p}",
                "partition": p,
                "low": low,
                "end": ends[p],
                "size": 0,
            }
            for p, (low, _) in marks.items()
        ]

    def pending(
        self, consumed: Mapping[str, Mapping[str, Any]], items: list[dict[str, Any]], max_lost: int
    ) -> tuple[list[dict[str, Any]], int]:
        """The partitions with messages past what was consumed (each with its ``start``),
        and how many messages expired unread (a RetentionGap over ``max_lost``)."""
        return plan_offsets(self.topic, consumed, items, max_lost)

    def lag(self, todo: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """How far behind the topic each partition's consumed offsets are at planning:
        the messages this ingest reads (``lag_messages``) and the age of the oldest
        (``lag_s``, from its timestamp; None when the broker gives none)."""
        if not todo:
            return []
        kafka = _kafka()
        consumer = self._consumer()
        oldest: dict[int, float | None] = {}
        try:
            consumer.assign(
                [
                    kafka.TopicPartition(self.topic, int(i["partition"]), int(i["start"]))
                    for i in todo
                ]
            )
            deadline = time.monotonic() + TIMEOUT_S
            while len(oldest) < len(todo) and time.monotonic() < deadline:
                message = consumer.poll(0.2)
                if message is None or message.error() is not None or message.partition() in oldest:
                    continue
                kind, ms = message.timestamp()
                oldest[message.partition()] = (
                    None if kind == kafka.TIMESTAMP_NOT_AVAILABLE else ms / 1e3
                )
        finally:
            consumer.close()
        now = time.time()
        return [
            {
                "partition": int(i["partition"]),
                "start": int(i["start"]),
                "end": int(i["end"]),
                "lag_messages": int(i["end"]) - int(i["start"]),
                "lag_s": None
                if oldest.get(int(i["partition"])) is None
                else round(max(0.0, now - oldest[int(i["partition"])]), 3),  # type: ignore[operator]
            }
            for i in todo
        ]


def plan_offsets(
    topic: str,
    consumed: Mapping[str, Mapping[str, Any]],
    items: list[dict[str, Any]],
    max_lost: int,
) -> tuple[list[dict[str, Any]], int]:
    """What to read of each partition: from the consumed end (a partition never read: its
    earliest offset) to its planned end. Expired offsets are counted; more than
    ``max_lost`` of them fail the plan, naming each lost range."""
    todo, lost, gaps = [], 0, []
    for item in items:
        before = consumed.get(item["key"])
        start = int(before["end"]) if before else int(item["low"])
        if start > item["end"]:  # never on one topic: offsets only grow
            raise DataError(
                f"topic {topic!r} partition {item['partition']} ends at offset {item['end']}, "
                f"before the {start} already consumed: the topic was deleted and created "
                "again (or data.source names another cluster); nothing was committed. "
                "Ingest it into a new dataset (data.dataset)"
            )
        if start < item["low"]:
            gaps.append(f"partition {item['partition']} offsets {start}..{item['low'] - 1}")
            lost += int(item["low"]) - start
            start = int(item["low"])
        if item["end"] > start:
            todo.append({**item, "start": start})
    if lost > max_lost:
        raise RetentionGap(
            f"{lost} message(s) of topic {topic!r} expired before they were read ("
            f"{'; '.join(gaps)}): more than data.max_lost_messages ({max_lost}); nothing "
            "was committed. Raise it to accept the loss (counted in the manifest)"
        )
    if lost:
        logger.warning(
            "%d message(s) of topic %r expired before they were read (%s): "
            "accepted by data.max_lost_messages (%d)",
            lost,
            topic,
            "; ".join(gaps),
            max_lost,
        )
    return todo, lost


def _ends(
    consumer: Any, kafka: Any, topic: str, marks: dict[int, tuple[int, int]]
) -> dict[int, int]:
    """Each partition's end: one past the last offset of its last batch (read from the
    high watermark - 1 until the partition's end, quiet, or ``ENDS_S``: messages still
    arriving are not chased; the end is one past the last seen)."""
    ends = {p: high for p, (_, high) in marks.items()}
    filled = [p for p, (low, high) in marks.items() if high > low]
    if not filled:
        return ends
    consumer.assign([kafka.TopicPartition(topic, p, marks[p][1] - 1) for p in filled])
    waiting, quiet = set(filled), time.monotonic()
    stop = quiet + ENDS_S
    while waiting and time.monotonic() - quiet < QUIET_S and time.monotonic() < stop:
        message = consumer.poll(0.1)
        if message is None:
            continue
        error = message.error()
        if error is not None:
            if error.code() == kafka.KafkaError._PARTITION_EOF:
                waiting.discard(message.partition())
                continue
            raise DataError(f"data.source: topic {topic!r}: {error}")
        ends[message.partition()] = max(ends[message.partition()], message.offset() + 1)
        quiet = time.monotonic()
    consumer.unassign()
    return ends


def _fetch(source: KafkaSource, item: dict[str, Any]) -> list[tuple[int, bytes | None]]:
    """(offset, value) of every message in ``[start, end)`` of the item's partition."""
    kafka = _kafka()
    start, end, partition = int(item["start"]), int(item["end"]), int(item["partition"])
    consumer = source._consumer()
    try:
        low, _ = consumer.get_watermark_offsets(
            kafka.TopicPartition(source.topic, partition), timeout=TIMEOUT_S
        )
        if low > start:  # expired between planning and reading: never read past it
            raise DataError(f"offsets {start}..{low - 1} expired before they were read")
        consumer.assign([kafka.TopicPartition(source.topic, partition, start)])
        out: list[tuple[int, bytes | None]] = []
        waited = time.monotonic()
        while True:
            message = consumer.poll(0.2)
            if message is None:
                if time.monotonic() - waited > TIMEOUT_S:
                    got = out[-1][0] + 1 if out else start
                    raise DataError(
                        f"no message for {TIMEOUT_S:.0f} s at offset {got} of {start}..{end - 1}"
                    )
                continue
            error = message.error()
            if error is not None:
                if error.code() == kafka.KafkaError._PARTITION_EOF:
                    if message.offset() >= end or (out and out[-1][0] >= end - 1):
                        break  # (the last offsets may be control records: never delivered)
                    continue  # an end reported early (the broker's watermark): keep polling
                raise DataError(str(error))
            waited = time.monotonic()
            if message.offset() >= end:
                break
            out.append((message.offset(), message.value()))
            if message.offset() >= end - 1:
                break
        return out
    finally:
        consumer.close()
