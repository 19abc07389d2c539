"""The notifier protocol and the receiver registry keyed by YAML ``type:``.

Like Alertmanager's integrations, a notifier only knows how to deliver one alert
and says whether a failure is worth retrying; dedup, retry and routing are shared
stages around it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from spendwatch.alerts import Alert


class NotifyError(Exception):
    """A delivery failed; ``retryable`` says whether trying again can help."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class Notifier(ABC):
    """Delivers alerts to one receiver."""

    name: str

    @abstractmethod
    def notify(self, alert: Alert) -> None:
        """Deliver one alert or raise :class:`NotifyError`."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (files, sessions)."""


@dataclass(frozen=True)
class NotifierType:
    config_class: type
    build: Callable[[Any], Notifier]


NOTIFIER_TYPES: dict[str, NotifierType] = {}


def register_notifier(type_name: str, config_class: type) -> Callable[[type], type]:
    """Class decorator: make a notifier available as ``type: <type_name>`` in ``receivers:``."""

    def decorate(cls: type) -> type:
        NOTIFIER_TYPES[type_name] = NotifierType(config_class, cls)
        return cls

    return decorate
