"""``type: kafka``: alerts published as JSON to a topic, keyed by fingerprint.

Keying by fingerprint keeps every notification of one condition (firing, then
resolved) on one partition, in order, and lets a compacted topic hold the latest
state per condition. ``notify`` waits for the broker's acknowledgement so a
failure is reported to the delivery stage (retryable) instead of being lost in a
background queue; alerts are rare, so the wait costs nothing that matters.
"""

from __future__ import annotations

import re
from typing import Literal

from confluent_kafka import KafkaError, Message, Producer
from pydantic import Field

from spendwatch.core.alerts import Alert
from spendwatch.core.kafkaconf import KafkaConnection
from spendwatch.notifiers.base import Notifier, NotifyError, register_notifier
from spendwatch.notifiers.redaction import Redactor

_SECRET_PROPERTY = re.compile(r"password|secret|token|username|jaas|oauthbearer\.config|\.pem$")
"""librdkafka properties whose values are credentials (a SASL username is often an API key)."""


class KafkaReceiverConfig(KafkaConnection):
    type: Literal["kafka"] = "kafka"
    name: str = Field(default="kafka", description="receiver name used by routes")
    topic: str = Field(min_length=1, description="topic the alerts are published to")
    timeout: float = Field(
        default=10.0, gt=0, le=300, description="seconds to wait for the broker's acknowledgement"
    )


@register_notifier("kafka", KafkaReceiverConfig)
class KafkaNotifier(Notifier):
    def __init__(self, config: KafkaReceiverConfig) -> None:
        self.name = config.name
        self.config = config
        self.redactor = Redactor(
            value.get_secret_value()
            for key, value in config.client.items()
            if _SECRET_PROPERTY.search(key)
        )
        self._producer: Producer | None = self._connect()  # bad settings fail at start-up

    def _connect(self) -> Producer:
        settings = self.config.settings(
            **{
                "acks": "all",
                "enable.idempotence": True,  # broker-side retries never duplicate an alert
                "message.timeout.ms": int(self.config.timeout * 1000),
            }
        )
        try:
            return Producer(settings)
        except Exception as error:  # librdkafka quotes a rejected property's value
            message = self.redact(f"kafka {self.config.topic}: bad client settings: {error}")
        raise NotifyError(message, retryable=False)

    def notify(self, alert: Alert) -> None:
        if self._producer is None:  # closed earlier, used again
            self._producer = self._connect()
        outcome: list[KafkaError | None] = []

        def delivered(error: KafkaError | None, _message: Message) -> None:
            outcome.append(error)

        headers = [
            ("spendwatch-status", alert.status.encode()),
            ("spendwatch-kind", alert.kind.encode()),
        ]
        try:
            self._producer.produce(
                self.config.topic,
                key=alert.fingerprint.encode(),
                value=alert.to_json_bytes(),
                headers=headers,
                on_delivery=delivered,
            )
        except BufferError:
            failure = NotifyError(f"kafka {self.config.topic}: local queue full", retryable=True)
        except Exception as error:  # librdkafka's text; redacted, and not chained
            failure = NotifyError(
                self.redact(f"kafka {self.config.topic}: {error}"), retryable=False
            )
        else:
            failure = None
        if failure is not None:
            raise failure
        self._producer.flush(self.config.timeout)
        if not outcome:
            raise NotifyError(
                f"kafka {self.config.topic}: no acknowledgement within {self.config.timeout:g}s",
                retryable=True,
            )
        error = outcome[0]
        if error is not None:
            raise NotifyError(
                self.redact(f"kafka {self.config.topic}: {error.str()}"),
                retryable=error.retriable() or error.code() == KafkaError._MSG_TIMED_OUT,
            )

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.config.timeout)
            self._producer = None  # disconnect now, not whenever this object is collected
