"""Helpers for the Kafka tests: create topics, produce, read back, committed offsets."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


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
        {
            "bootstrap.servers": broker,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
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
