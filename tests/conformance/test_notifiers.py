"""Conformance suite run over every registered notifier (the Alertmanager notify test-kit idea).

Every ``type:`` in the registry needs a harness here, so a new receiver cannot land
without being checked for: retry semantics on 429/5xx, no retry on credential errors,
the secret never in errors, logs or what it sends, and idempotent redelivery after a
crash (one Slack message, one Jira issue, one file line, one flag entry).
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from spendwatch.notifiers.base import NOTIFIER_TYPES, Delivery, MemoryState, Notifier, NotifyError
from spendwatch.notifiers.console import ConsoleConfig, ConsoleNotifier
from spendwatch.notifiers.fake_http import FakeServer, Fault
from spendwatch.notifiers.fake_jira import FakeJira
from spendwatch.notifiers.fake_slack import FakeSlack
from spendwatch.notifiers.file import FileConfig, FileNotifier
from spendwatch.notifiers.flags import FlagConfig, FlagNotifier
from spendwatch.notifiers.jira import JiraConfig, JiraNotifier
from spendwatch.notifiers.registry import build_notifier
from spendwatch.notifiers.slack import SlackConfig
from tests.notifier_kit import anomaly_alert, budget_alert

SLACK_TOKEN = "xoxb-4242-conformance-secret"
JIRA_TOKEN = "jira-conformance-secret-4242"


@dataclass
class Harness:
    """How to build one receiver type against its fake and count what it did."""

    build: Callable[[str | None], Notifier]  # argument: a wrong secret, or None for the right one
    effects: Callable[[], int]
    alert: Callable[[], object]
    server: FakeServer | None = None
    write_endpoint: str | None = None
    secret: str | None = None
    sent: Callable[[], str] = lambda: ""  # everything the receiver produced, as text


def _slack(tmp: Path) -> Iterator[Harness]:
    with FakeSlack(token=SLACK_TOKEN) as server:

        def build(wrong: str | None) -> Notifier:
            token = wrong or SLACK_TOKEN
            return build_notifier(
                SlackConfig(token=token, channel="C0ALERTS", base_url=server.api_url, timeout=2)
            )

        yield Harness(
            build,
            lambda: len(server.messages()),
            anomaly_alert,
            server,
            "chat.postMessage",
            SLACK_TOKEN,
            lambda: json.dumps(server.messages()),
        )


def _jira(tmp: Path) -> Iterator[Harness]:
    with FakeJira(token=JIRA_TOKEN) as server:

        def build(wrong: str | None) -> Notifier:
            return JiraNotifier(
                JiraConfig(url=server.url, token=wrong or JIRA_TOKEN, project="FIN", timeout=2)
            )

        yield Harness(
            build,
            lambda: len(server.issues),
            anomaly_alert,
            server,
            "POST issue",
            JIRA_TOKEN,
            lambda: json.dumps(server.issues),
        )


def _file(tmp: Path) -> Iterator[Harness]:
    path = tmp / "alerts.jsonl"

    def lines() -> int:
        return len(path.read_text().splitlines()) if path.exists() else 0

    yield Harness(lambda _: FileNotifier(FileConfig(path=str(path))), lines, anomaly_alert)


def _console(tmp: Path) -> Iterator[Harness]:
    stream = io.StringIO()
    yield Harness(
        lambda _: ConsoleNotifier(ConsoleConfig(), stream=stream),
        lambda: len(stream.getvalue().splitlines()),
        anomaly_alert,
    )


def _flags(tmp: Path) -> Iterator[Harness]:
    path = tmp / "flags.json"

    def entries() -> int:
        if not path.exists():
            return 0
        targeting = json.loads(path.read_text())["flags"]["llm-spend-throttle"].get("targeting")
        return (len(targeting["if"]) - 1) // 2 if targeting else 0

    yield Harness(
        lambda _: FlagNotifier(FlagConfig(path=str(path), mode="apply")),
        entries,
        lambda: budget_alert(100.0),
    )


def _kafka(tmp: Path) -> Iterator[Harness]:
    from confluent_kafka.admin import AdminClient, NewTopic

    from spendwatch.config import SpendwatchConfig
    from spendwatch.devbroker import start_broker, stop_broker

    process, broker = start_broker(tmp / "broker.log")
    try:
        admin = AdminClient({"bootstrap.servers": broker})  # must outlive its futures
        new = NewTopic("alerts", num_partitions=1, replication_factor=1)
        admin.create_topics([new])["alerts"].result(timeout=30)

        def build(_: str | None) -> Notifier:
            config = SpendwatchConfig(
                receivers=[{"type": "kafka", "brokers": [broker], "topic": "alerts"}]
            )
            return build_notifier(config.receivers[0])

        def messages() -> int:
            from confluent_kafka import Consumer, TopicPartition

            consumer = Consumer({"bootstrap.servers": broker, "group.id": "conformance"})
            try:
                _, high = consumer.get_watermark_offsets(TopicPartition("alerts", 0), timeout=10)
            finally:
                consumer.close()
            return high

        yield Harness(build, messages, budget_alert)
    finally:
        stop_broker(process)


HARNESSES = {
    "kafka": _kafka,
    "slack": _slack,
    "jira": _jira,
    "file": _file,
    "console": _console,
    "feature_flag": _flags,
}
REMOTE = ["slack", "jira"]


@pytest.fixture
def harness(request, tmp_path) -> Iterator[Harness]:
    yield from HARNESSES[request.param](tmp_path)


def test_every_registered_notifier_has_a_harness():
    assert set(NOTIFIER_TYPES) == set(HARNESSES)
    assert {"slack", "jira"} <= set(REMOTE)


@pytest.mark.parametrize("harness", sorted(NOTIFIER_TYPES), indirect=True)
def test_delivers_one_effect_per_alert(harness):
    harness.build(None).notify(harness.alert())
    assert harness.effects() == 1


@pytest.mark.parametrize("harness", REMOTE, indirect=True)
def test_429_is_retryable_and_carries_retry_after(harness):
    harness.server.fail(harness.write_endpoint, Fault.http(429, retry_after=2))
    with pytest.raises(NotifyError) as caught:
        harness.build(None).notify(harness.alert())
    assert caught.value.retryable is True and caught.value.retry_after == 2.0
    assert harness.effects() == 0


@pytest.mark.parametrize("harness", REMOTE, indirect=True)
@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_retryable(harness, status):
    harness.server.fail(harness.write_endpoint, Fault.http(status))
    with pytest.raises(NotifyError) as caught:
        harness.build(None).notify(harness.alert())
    assert caught.value.retryable is True
    assert harness.effects() == 0


@pytest.mark.parametrize("harness", REMOTE, indirect=True)
def test_connection_reset_is_retryable(harness):
    harness.server.fail(harness.write_endpoint, Fault.reset())
    with pytest.raises(NotifyError) as caught:
        harness.build(None).notify(harness.alert())
    assert caught.value.retryable is True


@pytest.mark.parametrize("harness", REMOTE, indirect=True)
def test_credential_errors_are_not_retried_and_the_secret_never_leaks(harness, capsys, caplog):
    wrong = "wrong-secret-" + harness.secret[::-1]
    caplog.set_level(logging.DEBUG)
    with pytest.raises(NotifyError) as caught:
        harness.build(wrong).notify(harness.alert())
    error = caught.value
    assert error.retryable is False
    chain = [error, error.__cause__, error.__context__]
    text = " ".join(f"{e!s} {e!r}" for e in chain if e is not None)
    captured = capsys.readouterr()
    logs = captured.out + captured.err + caplog.text
    for secret in (wrong, harness.secret):
        assert secret not in text
        assert secret not in logs


@pytest.mark.parametrize("harness", REMOTE, indirect=True)
def test_the_secret_is_never_in_what_is_sent_or_logged(harness, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    harness.server.fail(harness.write_endpoint, Fault.http(500), Fault.reset())
    receiver = harness.build(None)
    for _ in range(3):
        try:
            receiver.notify(harness.alert())
            break
        except NotifyError as error:
            assert harness.secret not in str(error)
    captured = capsys.readouterr()
    assert harness.secret not in harness.sent()
    assert harness.secret not in captured.out + captured.err + caplog.text
    assert harness.secret not in repr(receiver.config)  # SecretStr masks it


IDEMPOTENT = sorted(t for t, kind in NOTIFIER_TYPES.items() if kind.build.idempotent)


def test_the_receivers_that_must_be_exactly_once_say_so():
    assert {"slack", "jira", "file", "feature_flag"} <= set(IDEMPOTENT)


@pytest.mark.parametrize("harness", IDEMPOTENT, indirect=True)
def test_redelivering_the_same_row_after_a_crash_has_one_effect(harness):
    """The outbox's row was sent, then the process died before recording it: send again."""
    receiver = harness.build(None)
    assert receiver.idempotent
    alert = harness.alert()
    state = MemoryState()
    started = time.time()
    receiver.deliver(alert, Delivery(attempt=1, state=state, first_attempt_at=started))
    # A crash can lose what the receiver recorded after its effect: redeliver with what
    # was durable before the call (remote receivers: nothing; the flag file: its entry).
    after_crash = state if harness.server is None else MemoryState()
    receiver.deliver(alert, Delivery(attempt=2, state=after_crash, first_attempt_at=started))
    assert harness.effects() == 1


@pytest.mark.parametrize("harness", REMOTE, indirect=True)
def test_lost_response_then_retry_has_one_effect(harness):
    harness.server.fail(harness.write_endpoint, Fault.lost())
    receiver = harness.build(None)
    alert = harness.alert()
    started = time.time()
    with pytest.raises(NotifyError) as caught:
        receiver.deliver(alert, Delivery(attempt=1, first_attempt_at=started))
    assert caught.value.retryable
    receiver.deliver(alert, Delivery(attempt=2, first_attempt_at=started))
    assert harness.effects() == 1


def test_console_and_kafka_are_declared_at_least_once():
    # stdout cannot be checked; Kafka consumers deduplicate on the fingerprint key and alert_id
    assert set(NOTIFIER_TYPES) - set(IDEMPOTENT) == {"console", "kafka"}
