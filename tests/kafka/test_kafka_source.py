"""The Kafka source end to end against a real broker: alerts, dead letters, offsets, resume."""

from __future__ import annotations

import json
import time
from pathlib import Path

import orjson
from bytewax.testing import run_main
from kafka_helpers import committed_offsets, consume_all, create_topic, produce

from spendwatch.config import DeadLetterConfig, JsonlSourceConfig, SpendwatchConfig
from spendwatch.core import stats
from spendwatch.dataflows.flow import get_flow
from spendwatch.dataflows.kafka import ORIGIN_HEADER, REASON_HEADER, KafkaSource
from spendwatch.notifiers.file import FileConfig, FileNotifier
from spendwatch.notifiers.registry import build_notifier

PARTITIONS = 3


def event(event_id: str, hour: int, tenant: str, **fields: object) -> bytes:
    return orjson.dumps(
        {"event_id": event_id, "ts": f"2026-03-02T{hour:02d}:15:00Z", "tenant": tenant, **fields}
    )


def stream() -> tuple[list[bytes], list[bytes]]:
    """(valid events, invalid messages): acme spends $12 of a $10 budget, globex $3."""
    valid = []
    for hour in range(6):
        for n in range(4):
            valid.append(event(f"a-{hour}-{n}", hour, "acme", cost_usd=0.5))
        valid.append(
            event(
                f"g-{hour}",
                hour,
                "globex",
                model="gpt-4o-mini",
                input_tokens=1_000_000,
                output_tokens=0,
            )
        )
    invalid = [
        b'{"event_id": "broken", "ts": ',
        b'{"event_id": "no-ts", "tenant": "acme", "cost_usd": 1}',
        event("negative", 1, "acme", input_tokens=-3),
        event("unknown-model", 1, "acme", model="gpt-9", input_tokens=10),
    ]
    return valid, invalid


def config_for(
    broker: str, topics: list[str], tmp_path: Path, **source: object
) -> SpendwatchConfig:
    return SpendwatchConfig(
        source={
            "type": "kafka",
            "brokers": [broker],
            "topics": topics,
            "tail": False,
            "group_id": f"group-{topics[0]}",
            **source,
        },
        dimensions=["tenant", "model"],
        dead_letter={"path": str(tmp_path / "dead.jsonl")},
        pricing={"models": {"gpt-4o-mini": {"input": 0.5, "output": 1.0}}},
        budgets=[
            {
                "name": "tenant-daily",
                "scope_by": ["tenant"],
                "amount_usd": 10,
                "period": "day",
                "thresholds": [50, 100],
            }
        ],
        engine={"allowed_lateness": "5m", "dedup_horizon": "1d"},
    )


def run(config: SpendwatchConfig, alerts_path: Path, *, configured: bool = False) -> list[dict]:
    """Run the flow to the end of the input; the alerts it wrote to a file (and, with
    ``configured``, to the receivers of the config as well)."""
    stats.reset()

    extra = [build_notifier(r) for r in config.receivers] if configured else []

    def receivers() -> list:
        return [FileNotifier(FileConfig(path=str(alerts_path))), *extra]

    run_main(get_flow(config, receivers=receivers))
    for notifier in extra:  # a Kafka receiver's producer disconnects before the broker stops
        notifier.close()
    if not alerts_path.exists():
        return []
    return [json.loads(line) for line in alerts_path.read_text().splitlines()]


def keyed(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    """Key each message by event_id (what producers should do: duplicates share a partition)."""
    keys = []
    for line in lines:
        try:
            keys.append(str(orjson.loads(line).get("event_id", "")).encode())
        except orjson.JSONDecodeError:
            keys.append(b"unparsable")
    return list(zip(keys, lines, strict=True))


def test_kafka_events_raise_the_same_alerts_as_a_file_and_bad_ones_reach_the_dlq(
    broker: str, topic_name: str, tmp_path: Path
) -> None:
    valid, invalid = stream()
    duplicate = valid[0]
    messages = keyed([*valid, *invalid, duplicate])
    create_topic(broker, topic_name, PARTITIONS)
    create_topic(broker, f"{topic_name}-dlq", 1)
    produce(broker, topic_name, messages)

    config = config_for(broker, [topic_name], tmp_path, dead_letter_topic=f"{topic_name}-dlq")
    alerts = run(config, tmp_path / "kafka-alerts.jsonl")
    counters = stats.current()
    assert counters.events == len(valid)
    assert counters.duplicates == 1
    assert counters.dead_lettered == len(invalid)

    # the same lines from a file: the same alert conditions
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_bytes(b"\n".join(value for _, value in messages) + b"\n")
    replay = {
        "source": JsonlSourceConfig(path=str(jsonl)),
        "dead_letter": DeadLetterConfig(path=None),
    }
    file_config = config.model_copy(update=replay)
    file_alerts = run(file_config, tmp_path / "file-alerts.jsonl")
    identities = {(a["fingerprint"], a["status"], a["threshold"]) for a in alerts}
    assert identities == {(a["fingerprint"], a["status"], a["threshold"]) for a in file_alerts}
    fired = sorted((a["scope"]["tenant"], a["threshold"]) for a in alerts)
    assert fired == [("acme", 50.0), ("acme", 100.0)]

    # dead-letter topic: original key and bytes, reason and origin in headers
    dlq = consume_all(broker, f"{topic_name}-dlq")
    assert sorted(m.value() for m in dlq) == sorted(invalid)
    reasons = {}
    for message in dlq:
        headers = dict(message.headers())
        reasons[message.value()] = headers[REASON_HEADER].decode()
        topic, _, _offset = headers[ORIGIN_HEADER].decode().rpartition("/")
        assert topic == topic_name
        assert dict(keyed([message.value()]))[message.key()] == message.value()
    assert reasons[invalid[0]].startswith("malformed JSON")
    assert "ts" in reasons[invalid[1]]
    assert "input_tokens" in reasons[invalid[2]]
    assert reasons[invalid[3]].startswith("unknown model 'gpt-9'")
    # ... and the dead-letter file has them too
    records = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert sorted(r["raw"].encode() for r in records) == sorted(m.strip() for m in invalid)

    # the group's committed offsets mark the whole topic as read
    ends = [0] * PARTITIONS
    for message in consume_all(broker, topic_name):
        ends[message.partition()] = max(ends[message.partition()], message.offset() + 1)
    assert committed_offsets(broker, config.source.group_id, topic_name, PARTITIONS) == ends


def test_a_new_run_of_the_group_continues_after_its_committed_offsets(
    broker: str, topic_name: str, tmp_path: Path
) -> None:
    valid, _ = stream()
    create_topic(broker, topic_name, 1)
    produce(broker, topic_name, keyed(valid[:10]))
    config = config_for(broker, [topic_name], tmp_path)
    run(config, tmp_path / "a.jsonl")
    assert stats.current().events == 10
    run(config, tmp_path / "b.jsonl")
    assert stats.current().events == 0
    produce(broker, topic_name, keyed(valid[10:]))
    run(config, tmp_path / "c.jsonl")
    assert stats.current().events == len(valid) - 10


def test_a_resumed_partition_reads_on_from_its_snapshot_and_keeps_dedup(
    broker: str, topic_name: str, tmp_path: Path
) -> None:
    valid, _ = stream()
    create_topic(broker, topic_name, 1)
    produce(broker, topic_name, keyed(valid[:12]))
    config = config_for(broker, [topic_name], tmp_path, batch_size=5, commit_offsets=False)
    source = KafkaSource(config.source, config.parser_settings())
    part = f"{topic_name}/0"
    first = source.build_part("events", part, None)
    seen = 0
    while seen < 10:
        seen += sum(batch.size for batch in first.next_batch())
    state = first.snapshot()
    first.close()
    assert state[0] == 10

    # a producer retry re-sends an event already counted, then new events follow
    produce(broker, topic_name, keyed([valid[3], *valid[12:]]))
    resumed = source.build_part("events", part, state)
    sizes, duplicates = 0, 0
    try:
        while True:
            for batch in resumed.next_batch():
                sizes += batch.size
                duplicates += batch.duplicates
    except StopIteration:
        pass
    resumed.close()
    assert sizes == len(valid) - 10
    assert duplicates == 1


def test_several_topics_feed_one_flow(broker: str, topic_name: str, tmp_path: Path) -> None:
    valid, _ = stream()
    second = f"{topic_name}-b"
    create_topic(broker, topic_name, 2)
    create_topic(broker, second, 1)
    produce(broker, topic_name, keyed(valid[:15]))
    produce(broker, second, keyed(valid[15:]))
    create_topic(broker, f"{topic_name}-alerts", 1)
    config = config_for(broker, [topic_name, second], tmp_path)
    kafka_receiver = {"type": "kafka", "brokers": [broker], "topic": f"{topic_name}-alerts"}
    config = SpendwatchConfig.model_validate({**config.model_dump(), "receivers": [kafka_receiver]})
    assert KafkaSource(config.source, config.parser_settings()).list_parts() == [
        f"{topic_name}/0",
        f"{topic_name}/1",
        f"{second}/0",
    ]
    alerts = run(config, tmp_path / "alerts.jsonl", configured=True)
    assert stats.current().events == len(valid)
    assert sorted((a["scope"]["tenant"], a["threshold"]) for a in alerts) == [
        ("acme", 50.0),
        ("acme", 100.0),
    ]
    published = consume_all(broker, f"{topic_name}-alerts")
    assert sorted(json.loads(m.value())["alert_id"] for m in published) == sorted(
        a["alert_id"] for a in alerts
    )


def test_tailing_waits_for_messages_and_group_offsets_trail_snapshots(
    broker: str, topic_name: str, tmp_path: Path
) -> None:
    valid, _ = stream()
    create_topic(broker, topic_name, 1)
    config = config_for(broker, [topic_name], tmp_path, tail=True, batch_size=5)
    group = config.source.group_id
    part = KafkaSource(config.source, config.parser_settings()).build_part(
        "events", f"{topic_name}/0", None
    )
    assert all(batch.size == 0 for batch in part.next_batch())
    assert part.next_awake() is not None  # asks to be woken later instead of spinning
    produce(broker, topic_name, keyed(valid[:10]))

    def read(count: int) -> None:
        seen = 0
        while seen < count:
            seen += sum(batch.size for batch in part.next_batch())

    def committed_soon(expected: int) -> int:
        for _ in range(100):
            (offset,) = committed_offsets(broker, group, topic_name, 1)
            if offset == expected:
                break
            time.sleep(0.1)
        return offset

    read(5)
    assert part.snapshot()[0] == 5
    read(5)
    assert part.snapshot()[0] == 10
    # the group's offset is the previous snapshot's, never ahead of stored state
    assert committed_soon(5) == 5
    part.snapshot()
    assert committed_soon(10) == 10
    part.close()


def test_an_empty_or_drained_partition_says_once_that_it_caught_up(
    broker: str, topic_name: str, tmp_path: Path
) -> None:
    """So the watermark of the other partitions is not held back by an idle one."""
    valid, _ = stream()
    create_topic(broker, topic_name, 1)
    config = config_for(broker, [topic_name], tmp_path, tail=True, batch_size=50)
    part = KafkaSource(config.source, config.parser_settings()).build_part(
        "events", f"{topic_name}/0", None
    )

    def poll_until_idle() -> list:
        seen = []
        for _ in range(200):
            batches = part.next_batch()
            seen.extend(batches)
            if any(batch.caught_up for batch in batches):
                return seen
            time.sleep(0.02)
        raise AssertionError("the partition never said it caught up")

    first = poll_until_idle()
    assert [b.caught_up for b in first] == [True] and first[0].size == 0
    assert not any(b.caught_up for b in part.next_batch()), "said once, not at every poll"
    produce(broker, topic_name, keyed(valid))
    again = poll_until_idle()
    assert sum(b.size for b in again) == len(valid), "events first, then caught up again"
    assert again[-1].caught_up and not any(b.caught_up for b in again[:-1])
    part.close()
