"""Crash recovery of the real worker process reading a Kafka topic (SIGKILL at random points)."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest
from kafka_helpers import create_topic, produce

from spendwatch.ops import demo
from tests.workers import (
    CLI,
    HOURLY_BUDGET,
    assert_exactly_once,
    identities,
    kill_loop,
    run_cli,
    worker_config,
)

# Several partitions, read at different speeds: the watermark follows the slowest one
# (until it is caught up), so every run judges the same windows with the same contents.
PARTITIONS = 3


@pytest.fixture(scope="module")
def stream_topic(broker: str) -> str:
    """Three days with a spend spike and a token regression (≈ 100 k messages, keyed by
    event id, in time order)."""
    stream = demo.generate(
        days=3, scale=0.4, seed=21, spike_at_hours=1 * 24 + 10, regression_at_hours=2 * 24 + 2
    )
    topic = f"crash-{random.Random().getrandbits(48):012x}"
    create_topic(broker, topic, PARTITIONS)
    messages = [(str(orjson.loads(line)["event_id"]).encode(), line) for line in stream.lines]
    produce(broker, topic, messages)
    return topic


def kafka_worker_config(
    directory: Path, broker: str, topic: str, name: str, batch_size: int
) -> tuple[Path, Path]:
    """The crash test's file-source config with a Kafka source that stops at the end."""
    config, alerts = worker_config(directory, "unused.jsonl", name=name, budgets=HOURLY_BUDGET)
    _, rest = config.read_text().split("\nengine:", 1)
    source = (
        "source:\n  type: kafka\n"
        f"  brokers: [{broker}]\n  topics: [{topic}]\n  group_id: {name}-{topic}\n"
        f"  tail: false\n  batch_size: {batch_size}\n"
    )
    config.write_text(source + "\nengine:" + rest)
    return config, alerts


def test_sigkill_at_random_points_loses_and_repeats_nothing_from_kafka(
    broker: str, stream_topic: str, tmp_path: Path
) -> None:
    reference_config, reference_alerts = kafka_worker_config(
        tmp_path, broker, stream_topic, "reference", batch_size=500
    )
    run_cli(
        "run",
        "--config",
        str(reference_config),
        "--state-dir",
        str(tmp_path / "reference-state"),
        "--dump-state",
        str(tmp_path / "reference.json"),
    )

    # Small batches and frequent snapshots: many epochs, so kills land everywhere
    # (start-up, partition assignment, mid-batch, between a snapshot and its offset
    # commit, at the end of the topic).
    config, alerts = kafka_worker_config(tmp_path, broker, stream_topic, "crashed", batch_size=200)
    state = tmp_path / "crashed-state"
    command = [*CLI, "run", "--config", str(config), "--state-dir", str(state)]
    command += ["--dump-state", str(tmp_path / "crashed.json")]
    progress: list[int] = []  # alerts delivered when each kill landed

    def delivered() -> int:
        return len(identities(alerts)) if alerts.exists() else 0

    def record() -> None:
        progress.append(delivered())

    kills = kill_loop(
        command, seed=20261117, pause=(0.0, 1.5), on_kill=record, progress=delivered
    )
    assert kills >= 10
    expected = identities(reference_alerts)
    mid_stream = [n for n in progress if 0 < n < len(expected)]
    assert len(mid_stream) >= 5, f"kills should land while the topic is read: {progress}"
    assert_exactly_once(
        reference_alerts, alerts, tmp_path / "reference.json", tmp_path / "crashed.json"
    )
