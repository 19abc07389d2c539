"""Kafka input: one recoverable Bytewax partition per Kafka partition, emitting parsed batches.

Like the JSONL source, parsing happens inside the partition, because the partition
owns what must be snapshotted together: the offset of the next unread message and
the dedup window of recently seen event ids. Each snapshot is ``(offset, dedup)``.

Partitions and workers: every worker lists all partitions of the configured
topics and Bytewax hands each one to exactly one worker, so P partitions spread
over W workers (W > P leaves some workers without input; they still own state
shards). Which partition an event arrives on does not decide where its scope's
state lives (partials are routed by scope after pre-aggregation), but duplicates
are only recognised within one partition: producers should key messages by
``event_id`` so a re-sent event lands where its first copy did.

Invalid messages are counted and written to the dead-letter file like any other
input's, and, when ``dead_letter_topic`` is set, also published to that topic with
the reason in a header and the origin (``topic/partition@offset``) in another. They are
flushed before the partition's offset is snapshotted, so a recovered run never skips a
dead letter. The producer is idempotent (no repeats from its own retries), but a
restart re-reads from the snapshot and publishes what came after it again: consumers of
the topic dedupe by the origin header, which is the same on every copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_STORED, Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from spendwatch.core import stats
from spendwatch.core.kafkaconf import KafkaSourceConfig
from spendwatch.core.logging import get_logger
from spendwatch.dataflows.sources import record_batch
from spendwatch.ingest.events import DeadLetter, ParsedBatch
from spendwatch.ingest.parser import ParserSettings, parser_for

log = get_logger("spendwatch.kafka")

REASON_HEADER = "spendwatch-reason"
ORIGIN_HEADER = "spendwatch-origin"  # topic/partition@offset of the rejected message
_FLUSH_TIMEOUT = 30.0
_MIN_IDLE = 0.001


def part_name(topic: str, partition: int) -> str:
    """Bytewax partition key; ``/`` cannot occur in a Kafka topic name."""
    return f"{topic}/{partition}"


def parse_part_name(name: str) -> tuple[str, int]:
    topic, _, partition = name.rpartition("/")
    return topic, int(partition)


class DeadLetterPublisher:
    """Publishes rejected messages to the dead-letter topic, keeping their key and bytes."""

    def __init__(self, source: KafkaSourceConfig) -> None:
        assert source.dead_letter_topic is not None
        self.topic = source.dead_letter_topic
        self._producer = Producer(
            source.settings(**{"acks": "all", "enable.idempotence": True, "linger.ms": 20})
        )
        self._failures: list[str] = []

    def publish(self, dead: Sequence[DeadLetter], messages: Sequence[Message]) -> None:
        by_value: dict[bytes, Message] = {}
        for message in messages:
            value = message.value()
            if value:
                by_value.setdefault(value.strip(), message)
        for letter in dead:
            message = by_value.get(letter.raw)
            headers = [(REASON_HEADER, letter.reason.encode("utf-8"))]
            key, value = None, letter.raw
            if message is not None:
                origin = f"{message.topic()}/{message.partition()}@{message.offset()}"
                headers.append((ORIGIN_HEADER, origin.encode("utf-8")))
                key, value = message.key(), message.value()
            self._produce(key, value, headers)
        self._producer.poll(0)

    def _produce(self, key: bytes | None, value: bytes, headers: list) -> None:
        while True:
            try:
                self._producer.produce(
                    self.topic, value=value, key=key, headers=headers, on_delivery=self._delivered
                )
                return
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.5)

    def _delivered(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self._failures.append(error.str())

    def flush(self) -> None:
        """Wait until every dead letter is acknowledged; raise if any could not be delivered."""
        left = self._producer.flush(_FLUSH_TIMEOUT)
        if left or self._failures:
            problem = self._failures[0] if self._failures else f"{left} still queued"
            self._failures.clear()
            raise RuntimeError(f"dead-letter topic {self.topic!r}: delivery failed: {problem}")


def _with_offsets(dead: list[DeadLetter], messages: Sequence[Message]) -> list[DeadLetter]:
    """Each dead letter with the offset of its message (the first not yet used with those
    bytes): the key that makes it written once to the dead-letter file."""
    by_value: dict[bytes, list[int]] = {}
    for message in messages:
        value = message.value()
        if value and message.error() is None:
            by_value.setdefault(value.strip(), []).append(message.offset())
    placed = []
    for letter in dead:
        offsets = by_value.get(letter.raw)
        offset = offsets.pop(0) if offsets else None
        placed.append(dataclasses.replace(letter, offset=offset))
    return placed


class _KafkaPartition(StatefulSourcePartition[ParsedBatch, Any]):
    def __init__(
        self,
        source: KafkaSourceConfig,
        parsing: ParserSettings,
        topic: str,
        partition: int,
        resume: Any,
    ) -> None:
        self._source = source
        self._topic, self._partition = topic, partition
        self._parser = parser_for(parsing, f"kafka:{part_name(topic, partition)}", live=True)
        self._offset: int | None = None  # next offset to read; None until known
        if resume is not None:
            self._offset, dedup = resume
            self._parser.restore(dedup)
            stats.add_tally(self._parser.tally)
        self._committed = self._offset
        self._snapshotted = self._offset  # offset in the previous snapshot
        self._consumer = Consumer(
            source.settings(
                **{
                    "group.id": source.group_id,
                    "enable.auto.commit": False,
                    "enable.partition.eof": not source.tail,
                    "auto.offset.reset": source.starting_offset,
                }
            )
        )
        start = OFFSET_STORED if self._offset is None else self._offset
        self._consumer.assign([TopicPartition(topic, partition, start)])
        self._publisher = DeadLetterPublisher(source) if source.dead_letter_topic else None
        self._poll = source.poll_interval
        self._idle = _MIN_IDLE
        self._awake: datetime | None = None
        self._eof = False
        self._idle_sent = False
        self._where = TopicPartition(topic, partition)

    def next_batch(self) -> list[ParsedBatch]:
        self._awake = None
        if self._eof:
            if not self._idle_sent:  # say so before ending: the others need not wait for it
                self._idle_sent = True
                return [ParsedBatch.idle(self._parser.dimensions)]
            raise StopIteration
        messages = self._consumer.consume(self._source.batch_size, 0)
        values: list[bytes] = []
        last = None
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._eof = True
                    break
                self._consumer_error(error)
                continue
            last = message.offset()
            values.append(message.value() or b"")
        if last is not None:
            self._offset = last + 1
        elif self._offset is None:
            # Nothing read yet: once the consumer has resolved where it starts (the stored
            # group offset, or the earliest/latest one), that is the next offset to read,
            # so an empty partition can say it has caught up instead of stalling the rest.
            position = self._consumer.position([self._where])[0].offset
            low, high = self._consumer.get_watermark_offsets(self._where, cached=True)
            if position >= 0:
                self._offset = position
            elif 0 <= low == high:  # an empty partition: its next offset is its end
                self._offset = high
        caught_up = self._record_lag() == 0
        if last is None:
            if not self._eof:
                # Back off from a millisecond (a fetch is probably in flight) to poll_interval
                # (the topic is quiet): never spin, never sleep through a busy stream.
                self._awake = datetime.now(timezone.utc) + timedelta(seconds=self._idle)
                self._idle = min(self._idle * 2, self._poll)
            if caught_up and not self._idle_sent and not self._eof:
                self._idle_sent = True
                return [ParsedBatch.idle(self._parser.dimensions)]
            return []
        self._idle = _MIN_IDLE
        self._idle_sent = False
        batch = self._parser.parse(values)
        if batch.dead:
            batch.dead = _with_offsets(batch.dead, messages)
        record_batch(batch)
        if batch.dead and self._publisher is not None:
            self._publisher.publish(batch.dead, messages)
        return [batch]

    def _record_lag(self) -> int | None:
        """Messages not read yet: the high watermark of the last fetch minus the next offset.

        The cached watermark comes with every fetch response, so this asks the broker
        nothing; once per batch, never per message.
        """
        if self._offset is None:
            return None
        _, high = self._consumer.get_watermark_offsets(self._where, cached=True)
        if high < 0:
            return None
        lag = max(high - self._offset, 0)
        stats.current().lag[part_name(self._topic, self._partition)] = lag
        return lag

    def _consumer_error(self, error: KafkaError) -> None:
        where = part_name(self._topic, self._partition)
        if error.fatal() or not error.retriable():
            raise RuntimeError(f"Kafka error consuming {where}: {error.str()}")
        log.warning("kafka consumer error (retrying)", partition=where, error=error.str())

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> Any:
        if self._publisher is not None:
            self._publisher.flush()
        # The group offset trails the recovery store by one snapshot: a restart that finds
        # no recovery state (crash before the first snapshot was stored) re-reads a little
        # instead of skipping events whose effect was never stored.
        self._commit(self._snapshotted, asynchronous=True)
        self._snapshotted = self._offset
        return (self._offset, self._parser.snapshot())

    def _commit(self, offset: int | None, *, asynchronous: bool) -> None:
        if not self._source.commit_offsets or offset is None or offset == self._committed:
            return
        offsets = [TopicPartition(self._topic, self._partition, offset)]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=asynchronous)
            self._committed = offset
        except Exception as error:
            where = part_name(self._topic, self._partition)
            log.warning("offset commit failed", partition=where, error=str(error))

    def close(self) -> None:
        try:
            if self._publisher is not None:
                self._publisher.flush()
                self._publisher = None  # its producer goes now, not whenever the partition does
            # at the end of the input everything read was processed; otherwise stay behind
            self._commit(self._offset if self._eof else self._snapshotted, asynchronous=False)
        finally:
            self._consumer.close()


class KafkaSource(FixedPartitionedSource[ParsedBatch, Any]):
    """Every partition of the configured topics, emitting :class:`ParsedBatch` items."""

    def __init__(self, source: KafkaSourceConfig, parsing: ParserSettings) -> None:
        self.source = source
        self.parsing = parsing

    def list_parts(self) -> list[str]:
        source = self.source
        admin = AdminClient(source.settings())
        parts = []
        for topic in source.topics:
            metadata = admin.list_topics(topic, timeout=30).topics[topic]
            if metadata.error is not None:
                raise RuntimeError(f"Kafka topic {topic!r}: {metadata.error.str()}")
            parts.extend(part_name(topic, p) for p in sorted(metadata.partitions))
        return parts

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _KafkaPartition:
        topic, partition = parse_part_name(for_part)
        return _KafkaPartition(self.source, self.parsing, topic, partition, resume_state)
