"""The notifier protocol and the receiver registry keyed by YAML ``type:``.

Like Alertmanager's integrations, a notifier only knows how to deliver one alert
and says whether a failure is worth retrying; dedup, retry and routing are shared
stages around it (``outbox.py``, ``router.py``).

The outbox calls :meth:`Notifier.deliver` with a :class:`Delivery` that says which
attempt this is and gives the notifier a small durable key-value store. Attempt 2
or later means an earlier attempt *may* have had an effect (its response was lost,
or the process died before recording success), so idempotent notifiers look for
their own earlier effect before acting again.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from spendwatch.core.alerts import Alert
from spendwatch.notifiers.redaction import (  # noqa: F401 - redact: re-exported
    GENERIC,
    Redactor,
    redact,
)


class NotifyError(Exception):
    """A delivery failed; ``retryable`` says whether trying again can help."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class ReceiverState(Protocol):
    """Durable per-receiver key-value store (Slack message ts, Jira issue keys, throttles)."""

    def get(self, key: str) -> str | None: ...

    def put(self, key: str, value: str) -> None: ...

    def delete(self, key: str) -> None: ...

    def items(self, prefix: str = "") -> list[tuple[str, str]]: ...


class MemoryState:
    """A :class:`ReceiverState` kept in memory: for direct ``notify`` calls without an outbox."""

    def __init__(self) -> None:
        self._data: dict[str, str] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        return self._data.get(key)

    def put(self, key: str, value: str) -> None:
        with self._lock:
            self._data[key] = value

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def items(self, prefix: str = "") -> list[tuple[str, str]]:
        with self._lock:
            return sorted((k, v) for k, v in self._data.items() if k.startswith(prefix))


@dataclass
class Delivery:
    """What the outbox knows about this send of one alert to one receiver."""

    attempt: int = 1
    """1 on the first try; higher means an earlier try may already have had its effect."""
    state: ReceiverState = field(default_factory=MemoryState)
    first_attempt_at: float | None = None
    """Wall-clock time of the first attempt (bounds the search for an earlier effect)."""
    notes: list[str] = field(default_factory=list)
    """Lines other receivers want shown with the alert (e.g. a proposed flag change)."""
    proposals: dict[str, str] = field(default_factory=dict)
    """receiver → change it proposes for this alert and a person may approve."""

    @property
    def maybe_done(self) -> bool:
        """True when an earlier attempt may have delivered already: check before acting."""
        return self.attempt > 1


class Notifier(ABC):
    """Delivers alerts to one receiver."""

    name: str
    idempotent: ClassVar[bool] = False
    """True when redelivering an alert after a lost response has no second effect."""
    redactor: Redactor = GENERIC
    """Removes this receiver's credentials (every form of them) from text; receivers with
    secrets set their own in ``__init__``."""

    def redact(self, text: str) -> str:
        """``text`` without any form of this receiver's credentials (for logs and storage)."""
        return self.redactor(text)

    @abstractmethod
    def notify(self, alert: Alert) -> None:
        """Deliver one alert or raise :class:`NotifyError`."""

    def deliver(self, alert: Alert, delivery: Delivery) -> None:
        """Deliver one alert on behalf of the outbox (default: :meth:`notify`)."""
        self.notify(alert)

    def describe(self, alert: Alert) -> str | None:
        """A line other receivers should show with ``alert`` (what this receiver will do)."""
        return None

    def proposal(self, alert: Alert) -> str | None:
        """The change this receiver proposes for ``alert`` and awaits approval of, if any."""
        return None

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
