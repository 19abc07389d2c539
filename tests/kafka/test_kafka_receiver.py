"""``type: kafka`` receiver: alerts reach a topic as contract JSON, keyed by fingerprint."""

from __future__ import annotations

import json
import time

import pytest
from kafka_helpers import consume_all, create_topic

from spendwatch.config import SpendwatchConfig
from spendwatch.core.alerts import make_alert
from spendwatch.notifiers.base import NotifyError
from spendwatch.notifiers.registry import build_notifier
from spendwatch.testing.devbroker import free_port


def alert(status: str = "firing", tenant: str = "acme"):
    return make_alert(
        kind="budget",
        rule="tenant-daily",
        status=status,
        severity="critical",
        scope={"tenant": tenant},
        metric="spend_usd",
        window_start=1_772_409_600,
        window_end=1_772_409_900,
        observed=12.0,
        expected=10.0,
        score=120.0,
        threshold=100.0,
        episode_start=1_772_409_600,
        period="2026-03-02",
        fingerprint_threshold=100.0,
    )


def receiver(broker: str, topic: str, **extra: object):
    config = SpendwatchConfig(
        receivers=[{"type": "kafka", "brokers": [broker], "topic": topic, **extra}]
    )
    return build_notifier(config.receivers[0])


def test_alerts_are_published_as_json_keyed_by_fingerprint(broker: str, topic_name: str) -> None:
    create_topic(broker, topic_name, 3)
    notifier = receiver(broker, topic_name)
    sent = [alert("firing"), alert("firing", tenant="globex"), alert("resolved")]
    for item in sent:
        notifier.notify(item)
    notifier.close()
    messages = consume_all(broker, topic_name)
    assert sorted((m.key(), m.value()) for m in messages) == sorted(
        (a.fingerprint.encode(), a.to_json_bytes()) for a in sent
    )
    by_fingerprint = {}
    for message in messages:
        by_fingerprint.setdefault(message.key(), set()).add(message.partition())
        assert (
            dict(message.headers())["spendwatch-status"]
            == json.loads(message.value())["status"].encode()
        )
    assert all(len(parts) == 1 for parts in by_fingerprint.values())  # one condition, in order


def test_an_unreachable_broker_is_a_retryable_failure_without_secrets(topic_name: str) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    notifier = receiver(
        nobody,
        topic_name,
        timeout=1.0,
        client={
            "sasl.mechanism": "PLAIN",
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.username": "spend",
            "sasl.password": "hunter2-secret",
            "log_level": "0",
        },  # the refused connections are expected: keep them quiet
    )
    started = time.monotonic()
    with pytest.raises(NotifyError) as error:
        notifier.notify(alert())
    assert time.monotonic() - started < 10
    assert error.value.retryable
    notifier.close()
    assert "hunter2-secret" not in str(error.value)
    assert "hunter2-secret" not in repr(notifier.config)


def test_kafka_client_settings_cannot_override_managed_properties() -> None:
    with pytest.raises(ValueError, match=r"group\.id"):
        SpendwatchConfig(
            source={
                "type": "kafka",
                "brokers": ["b:9092"],
                "topics": ["t"],
                "client": {"group.id": "x"},
            }
        )
