"""Consumer lag of a Kafka partition: what is left after each batch, read by the metrics."""

from __future__ import annotations

from pathlib import Path

import orjson
from kafka_helpers import create_topic, produce

from spendwatch.config import SpendwatchConfig
from spendwatch.core import stats
from spendwatch.dataflows.kafka import KafkaSource
from spendwatch.service.metrics import build_registry

MESSAGES = 120


def test_lag_is_the_messages_left_after_each_batch_and_zero_at_the_end(
    broker: str, topic_name: str, tmp_path: Path
) -> None:
    create_topic(broker, topic_name, 2)
    lines = [
        orjson.dumps(
            {"event_id": f"e-{n}", "ts": "2026-03-02T10:00:00Z", "tenant": "acme", "cost_usd": 0.1}
        )
        for n in range(MESSAGES)
    ]
    produce(broker, topic_name, [(None, line) for line in lines], partition=1)
    config = SpendwatchConfig(
        source={
            "type": "kafka",
            "brokers": [broker],
            "topics": [topic_name],
            "tail": False,
            "batch_size": 25,
            "group_id": f"lag-{topic_name}",
        },
        dead_letter={"path": str(tmp_path / "dead.jsonl")},
    )
    stats.reset()
    registry = build_registry()
    source = KafkaSource(config.source, config.parser_settings())
    partition = source.build_part("events", f"{topic_name}/1", None)
    name = f"{topic_name}/1"
    read, seen = 0, []
    try:
        while True:
            try:
                batches = partition.next_batch()
            except StopIteration:
                break
            read += sum(len(batch.ts) + len(batch.dead) for batch in batches)
            if batches:
                seen.append(stats.current().lag[name])
                assert seen[-1] == MESSAGES - read
                sample = registry.get_sample_value("spendwatch_consumer_lag", {"partition": name})
                assert sample == MESSAGES - read
    finally:
        partition.close()
    assert read == MESSAGES
    assert len(seen) >= 2 and seen[0] > 0, f"several batches, the first leaving some: {seen}"
    assert stats.current().lag[name] == 0
    assert registry.get_sample_value("spendwatch_consumer_lag", {"partition": name}) == 0
    # the empty partition has no offset yet and reports nothing rather than a guess
    assert f"{topic_name}/0" not in stats.current().lag
