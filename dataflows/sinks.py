"""Sinks: alerts to the configured receivers, rejected events to the dead-letter file."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import orjson
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from spendwatch import stats
from spendwatch.alerts import Alert
from spendwatch.events import DeadLetter
from spendwatch.logging import get_logger
from spendwatch.notifiers.base import Notifier, NotifyError

log = get_logger("spendwatch.sink")


class _AlertPartition(StatelessSinkPartition[Alert]):
    def __init__(self, notifiers: list[Notifier]) -> None:
        self._notifiers = notifiers

    def write_batch(self, items: Sequence[Alert]) -> None:
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        counters = stats.current()
        for alert in items:
            if alert.detected_at is None:
                alert.detected_at = now
            counters.alerts_by_rule[alert.rule] += 1
            log.info(
                "alert",
                status=alert.status,
                kind=alert.kind,
                rule=alert.rule,
                scope=alert.scope,
                fingerprint=alert.fingerprint,
                window_start=alert.window_start,
                observed=alert.observed,
                expected=alert.expected,
                score=alert.score,
            )
            for notifier in self._notifiers:
                try:
                    notifier.notify(alert)
                except NotifyError as error:
                    log.error("delivery failed", receiver=notifier.name, error=str(error))

    def close(self) -> None:
        for notifier in self._notifiers:
            notifier.close()


class AlertSink(DynamicSink[Alert]):
    """Delivers alerts directly to the receivers built by ``build`` (one set per worker)."""

    def __init__(self, build: Callable[[], list[Notifier]]) -> None:
        self._build = build

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _AlertPartition:
        return _AlertPartition(self._build())


class _DeadLetterPartition(StatelessSinkPartition[DeadLetter]):
    def __init__(self, path: str | None) -> None:
        self._fd = None
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write_batch(self, items: Sequence[DeadLetter]) -> None:
        if self._fd is None or not items:
            return
        payload = b"".join(orjson.dumps(item.to_record()) + b"\n" for item in items)
        os.write(self._fd, payload)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)


class DeadLetterSink(DynamicSink[DeadLetter]):
    """Appends rejected events with their reason to a JSONL file (``None``: count only)."""

    def __init__(self, path: str | None) -> None:
        self.path = path

    def build(self, step_id: str, worker_index: int, worker_count: int) -> Any:
        return _DeadLetterPartition(self.path)
