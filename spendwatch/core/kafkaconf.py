"""Kafka connection and source settings, shared by the Kafka source and the Kafka receiver.

Client properties are librdkafka settings (``security.protocol``, ``sasl.username``,
``sasl.password``, ...). They are kept as secrets so that a printed or logged config
never shows a password; ``${ENV}`` references in the YAML fill them in.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from spendwatch.core.configtypes import StrictModel

# Properties the source and receiver manage themselves: overriding them would break
# offset handling or delivery guarantees, so they are rejected in `client:`.
_MANAGED = frozenset(
    {"bootstrap.servers", "group.id", "enable.auto.commit", "enable.partition.eof"}
)


class KafkaConnection(StrictModel):
    """Where the brokers are and how to authenticate to them."""

    brokers: list[str] = Field(min_length=1, description="host:port of one or more brokers")
    client: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="extra librdkafka properties, e.g. security.protocol, sasl.password",
    )

    @field_validator("client")
    @classmethod
    def _not_managed(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        clash = sorted(set(value) & _MANAGED)
        if clash:
            raise ValueError(f"set {', '.join(clash)} through the dedicated keys, not `client`")
        return value

    def settings(self, **managed: object) -> dict[str, object]:
        """librdkafka configuration: brokers, the caller's managed keys, then `client`."""
        settings: dict[str, object] = {"bootstrap.servers": ",".join(self.brokers)}
        settings.update(managed)
        settings.update({k: v.get_secret_value() for k, v in self.client.items()})
        return settings


class KafkaSourceConfig(KafkaConnection):
    """``type: kafka``: usage events, one JSON object per message value."""

    type: Literal["kafka"] = "kafka"
    topics: list[str] = Field(min_length=1, description="topics to consume")
    group_id: str = Field(
        default="spendwatch",
        min_length=1,
        description="consumer group whose committed offsets mark progress (and show lag)",
    )
    starting_offset: Literal["earliest", "latest"] = Field(
        default="earliest",
        description="where to start a partition with neither recovery state nor a committed offset",
    )
    tail: bool = Field(
        default=True, description="wait for new messages at the end (false: stop at the end)"
    )
    batch_size: int = Field(
        default=10_000, ge=1, le=1_000_000, description="messages parsed together at most"
    )
    poll_interval: float = Field(
        default=0.05, gt=0, le=10, description="seconds to wait when a partition has no messages"
    )
    commit_offsets: bool = Field(
        default=True,
        description="commit the group's offsets at each snapshot (progress and lag for tools)",
    )
    dead_letter_topic: str | None = Field(
        default=None,
        description="topic that receives invalid messages, reason in the spendwatch-reason header",
    )

    @field_validator("topics")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("topics must be distinct")
        return value
