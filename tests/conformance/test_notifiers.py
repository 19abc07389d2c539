"""Conformance suite run over every registered notifier (the Alertmanager notify test-kit idea).

Every ``type:`` in the registry needs a harness here, so a new receiver cannot land
without being checked for: retry semantics on 429/5xx, no retry on credential errors,
the secret never in errors, logs or what it sends, no form of the secret (raw, base64
of ``user:secret``, percent-encoded) anywhere when the remote side echoes the request's
credentials back, and idempotent redelivery after a crash (one Slack message, one Jira
issue, one file line, one flag entry). A harness for a receiver without credentials
says so in ``no_credentials``, and the suite checks that its config has no secret.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
import traceback
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import structlog
from pydantic import BaseModel, SecretStr

from spendwatch.notifiers.base import NOTIFIER_TYPES, Delivery, MemoryState, Notifier, NotifyError
from spendwatch.notifiers.console import ConsoleConfig, ConsoleNotifier
from spendwatch.notifiers.file import FileConfig, FileNotifier
from spendwatch.notifiers.flags import FlagConfig, FlagNotifier
from spendwatch.notifiers.jira import JiraConfig, JiraNotifier
from spendwatch.notifiers.outbox import Outbox
from spendwatch.notifiers.registry import build_notifier
from spendwatch.notifiers.slack import SlackConfig
from spendwatch.testing.fake_http import FakeServer, Fault
from spendwatch.testing.fake_jira import FakeJira
from spendwatch.testing.fake_slack import FakeSlack
from tests.notifier_kit import anomaly_alert, budget_alert

SLACK_TOKEN = "xoxb-4242-conformance-secret"
JIRA_TOKEN = "jira-conformance-secret-4242"
JIRA_EMAIL = "finops-bot@example.com"
KAFKA_USER = "KAFKAKEY4242"
KAFKA_PASSWORD = "kafka-conformance-secret/4242+="


def secret_forms(secret: str, user: str | None = None) -> list[str]:
    """The forms a credential takes on the wire (computed here, not by the redactor)."""
    forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}
    for plain in [secret, *([f"{user}:{secret}", f"\0{user}\0{secret}"] if user else [])]:
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(plain.encode()).decode()
            forms |= {encoded, encoded.rstrip("="), quote(encoded, safe="")}
    return sorted(forms)


@dataclass
class Echo:
    """A receiver whose remote side, once armed, answers with an error echoing its credentials."""

    label: str
    receiver: Notifier
    arm: Callable[[], None]  # queue the echoing answer for the receiver's next write
    forms: list[str]  # what must never appear in errors, logs or the outbox
    echoed: Callable[[], str]  # what the remote side sent back (proves the echo happened)


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
    echo: Callable[[], list[Echo]] | None = None  # receivers with credentials
    no_credentials: str | None = None  # receivers without: why not


def _echo_faults(
    server: FakeServer,
    endpoint: str,
    receiver: Callable[[], Notifier],
    forms: list[str],
    prefix: str = "",
) -> list[Echo]:
    """A non-retryable JSON echo and a retryable plain-text echo of the whole request."""
    cases = []
    for label, fault in (
        ("json-400", Fault.echo(400)),
        ("text-500", Fault.echo(500, plain=True)),
    ):
        cases.append(
            Echo(
                prefix + label,
                receiver(),
                lambda fault=fault: server.fail(endpoint, fault),
                forms,
                lambda: "\n".join(server.echoed),
            )
        )
    return cases


def _slack(tmp: Path) -> Iterator[Harness]:
    with FakeSlack(token=SLACK_TOKEN) as server:

        def build(wrong: str | None) -> Notifier:
            token = wrong or SLACK_TOKEN
            return build_notifier(
                SlackConfig(token=token, channel="C0ALERTS", base_url=server.api_url, timeout=2)
            )

        def echo() -> list[Echo]:
            return _echo_faults(
                server, "chat.postMessage", lambda: build(None), secret_forms(SLACK_TOKEN)
            )

        yield Harness(
            build,
            lambda: len(server.messages()),
            anomaly_alert,
            server,
            "chat.postMessage",
            SLACK_TOKEN,
            lambda: json.dumps(server.messages()),
            echo=echo,
        )


def _jira(tmp: Path) -> Iterator[Harness]:
    with FakeJira(token=JIRA_TOKEN) as server:

        def build(wrong: str | None) -> Notifier:
            return JiraNotifier(
                JiraConfig(url=server.url, token=wrong or JIRA_TOKEN, project="FIN", timeout=2)
            )

        def echo() -> list[Echo]:
            def basic() -> Notifier:  # Cloud: email + API token, sent as HTTP Basic
                config = JiraConfig(
                    url=server.url, email=JIRA_EMAIL, token=JIRA_TOKEN, project="FIN", timeout=2
                )
                return JiraNotifier(config)

            bearer, basic_forms = secret_forms(JIRA_TOKEN), secret_forms(JIRA_TOKEN, JIRA_EMAIL)
            return [
                *_echo_faults(server, "POST issue", lambda: build(None), bearer, "bearer-"),
                *_echo_faults(server, "POST issue", basic, basic_forms, "basic-"),
            ]

        yield Harness(
            build,
            lambda: len(server.issues),
            anomaly_alert,
            server,
            "POST issue",
            JIRA_TOKEN,
            lambda: json.dumps(server.issues),
            echo=echo,
        )


def _file(tmp: Path) -> Iterator[Harness]:
    path = tmp / "alerts.jsonl"

    def lines() -> int:
        return len(path.read_text().splitlines()) if path.exists() else 0

    yield Harness(
        lambda _: FileNotifier(FileConfig(path=str(path))),
        lines,
        anomaly_alert,
        no_credentials="appends to a local file; nothing to authenticate",
    )


def _console(tmp: Path) -> Iterator[Harness]:
    stream = io.StringIO()
    yield Harness(
        lambda _: ConsoleNotifier(ConsoleConfig(), stream=stream),
        lambda: len(stream.getvalue().splitlines()),
        anomaly_alert,
        no_credentials="prints to stdout; nothing to authenticate",
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
        no_credentials="rewrites a local flagd file; nothing to authenticate",
    )


def _kafka(tmp: Path) -> Iterator[Harness]:
    from confluent_kafka.admin import AdminClient, NewTopic

    from spendwatch.config import SpendwatchConfig
    from spendwatch.testing.devbroker import start_broker, stop_broker

    started: list[tuple[object, str]] = []
    admins: list[AdminClient] = []  # must outlive their futures

    def broker() -> str:
        """Started on first use: the credential checks need no broker."""
        if not started:
            started.append(start_broker(tmp / "broker.log"))
            admin = AdminClient({"bootstrap.servers": started[0][1]})
            admins.append(admin)
            new = NewTopic("alerts", num_partitions=1, replication_factor=1)
            admin.create_topics([new])["alerts"].result(timeout=30)
        return started[0][1]

    def build(_: str | None) -> Notifier:
        config = SpendwatchConfig(
            receivers=[{"type": "kafka", "brokers": [broker()], "topic": "alerts"}]
        )
        return build_notifier(config.receivers[0])

    def messages() -> int:
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": broker(), "group.id": "conformance"})
        try:
            _, high = consumer.get_watermark_offsets(TopicPartition("alerts", 0), timeout=10)
        finally:
            consumer.close()
        return high

    def echo() -> list[Echo]:
        """librdkafka's error texts can quote property values: a producer that says so."""
        client = {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": KAFKA_USER,
            "sasl.password": KAFKA_PASSWORD,
        }
        config = SpendwatchConfig(
            receivers=[
                {
                    "type": "kafka",
                    "brokers": ["127.0.0.1:9"],  # never contacted: the producer is replaced
                    "topic": "alerts",
                    "client": client,
                }
            ]
        )
        said = f"SASL authentication failed with {client} (PLAIN {_plain(KAFKA_USER)})"
        spoken: list[str] = []
        cases = []
        for label, where in (("produce", "raise"), ("acknowledgement", "callback")):
            receiver = build_notifier(config.receivers[0])
            cases.append(
                Echo(
                    label,
                    receiver,
                    lambda receiver=receiver, where=where: setattr(
                        receiver, "_producer", _EchoingProducer(said, where, spoken)
                    ),
                    secret_forms(KAFKA_PASSWORD, KAFKA_USER),
                    lambda: "\n".join(spoken),
                )
            )
        return cases

    try:
        yield Harness(build, messages, budget_alert, echo=echo)
    finally:
        if started:
            stop_broker(started[0][0])


def _plain(user: str) -> str:
    """The SASL PLAIN initial response, base64 of ``\\0user\\0password``."""
    return base64.b64encode(f"\0{user}\0{KAFKA_PASSWORD}".encode()).decode()


class _EchoingProducer:
    """Stands in for the librdkafka producer: fails quoting the client's credentials."""

    def __init__(self, text: str, where: str, spoken: list[str]) -> None:
        self.text, self.where, self.spoken = text, where, spoken

    def produce(self, topic, key=None, value=None, headers=None, on_delivery=None) -> None:
        from confluent_kafka import KafkaError, KafkaException

        error = KafkaError(KafkaError._AUTHENTICATION, self.text)
        self.spoken.append(self.text)
        if self.where == "raise":
            raise KafkaException(error)
        on_delivery(error, None)

    def flush(self, timeout: float = 0) -> int:
        return 0


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


def _secret_fields(model: type[BaseModel]) -> list[str]:
    """Fields of a config model that hold a SecretStr (directly or inside a container)."""
    found = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        stack = [annotation]
        while stack:
            node = stack.pop()
            if node is SecretStr:
                found.append(name)
                break
            if isinstance(node, type) and issubclass(node, BaseModel):
                found += [f"{name}.{inner}" for inner in _secret_fields(node)]
            stack.extend(typing.get_args(node))
    return found


def _exception_texts(error: BaseException) -> str:
    """Everything an exception can show: str, repr, args, traceback, its whole chain."""
    texts, seen, stack = [], set(), [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        texts += [str(current), repr(current), repr(current.args)]
        texts += traceback.format_exception(type(current), current, current.__traceback__)
        stack += [current.__cause__, current.__context__]
    return "\n".join(texts)


@pytest.mark.parametrize("harness", sorted(NOTIFIER_TYPES), indirect=True)
def test_an_error_echoing_the_credentials_leaks_no_form_of_them(harness, tmp_path, capfd, caplog):
    """The remote side answers with the request's Authorization header (and all headers):
    no form of the secret reaches the exception, the logs (structlog and the libraries'
    stdlib loggers, at DEBUG), or the bytes of the outbox database."""
    assert (harness.echo is None) != (harness.no_credentials is None), "say which it is"
    if harness.echo is None:
        config = harness.build(None).config
        assert _secret_fields(type(config)) == [], harness.no_credentials
        assert not harness.build(None).redactor.has_secrets
        return
    caplog.set_level(logging.DEBUG)
    cases = harness.echo()
    assert cases
    for case in cases:
        echoed_before = case.echoed()
        case.arm()
        with structlog.testing.capture_logs() as direct_logs, pytest.raises(NotifyError) as caught:
            case.receiver.notify(harness.alert())
        raised = _exception_texts(caught.value)
        assert len(case.echoed()) > len(echoed_before), f"{case.label}: nothing was echoed"
        assert any(form in case.echoed() for form in case.forms), f"{case.label}: echo is vacuous"

        path = tmp_path / f"{case.label}.sqlite"
        outbox = Outbox(str(path), {case.receiver.name: case.receiver})
        case.arm()
        outbox.put(harness.alert())
        with structlog.testing.capture_logs() as outbox_logs:
            outbox.step(case.receiver.name)
        [(stored_error,)] = outbox._conn().execute("SELECT error FROM deliveries").fetchall()
        assert stored_error, f"{case.label}: the failure was not recorded"
        database = b"".join(p.read_bytes() for p in sorted(tmp_path.glob(f"{case.label}.sqlite*")))
        outbox.close()
        database += b"".join(p.read_bytes() for p in sorted(tmp_path.glob(f"{case.label}.sqlite*")))

        captured = capfd.readouterr()
        logs = "\n".join(
            [captured.out, captured.err, caplog.text, json.dumps(direct_logs + outbox_logs)]
        )
        assert outbox_logs, f"{case.label}: the outbox logged nothing"
        for form in case.forms:
            assert form not in raised, f"{case.label}: {form!r} in the exception"
            assert form not in logs, f"{case.label}: {form!r} in the logs"
            assert form.encode() not in database, f"{case.label}: {form!r} in the outbox"
        caplog.clear()
