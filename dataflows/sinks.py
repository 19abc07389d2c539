"""Sinks: alerts to the configured receivers, rejected events to the dead-letter file."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import orjson
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from spendwatch import liveview, stats
from spendwatch.alerts import Alert
from spendwatch.dataflows.ledger import DeliveryLedger, identities_in_file
from spendwatch.events import DeadLetter
from spendwatch.logging import get_logger
from spendwatch.notifiers.base import Notifier, NotifyError
from spendwatch.notifiers.file import FileNotifier

log = get_logger("spendwatch.sink")


class _AlertPartition(StatelessSinkPartition[Alert]):
    def __init__(self, notifiers: list[Notifier], ledger: DeliveryLedger | None = None) -> None:
        self._notifiers = notifiers
        self._ledger = ledger
        if ledger is not None:
            for notifier in notifiers:
                if isinstance(notifier, FileNotifier):
                    ledger.record(notifier.name, identities_in_file(notifier.config.path))

    def write_batch(self, items: Sequence[Alert]) -> None:
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        counters = stats.current()
        fresh: list[dict] = []
        for alert in items:
            targets = self._pending(alert)
            if not targets:
                counters.alerts_replayed += 1  # delivered before a restart: not again
                continue
            if alert.detected_at is None:
                alert.detected_at = now
            counters.alerts_by_rule[alert.rule] += 1
            counters.alerts_by_kind_rule[(alert.kind, alert.rule)] += 1
            fresh.append(alert.model_dump(mode="json", exclude_none=True))
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
            for notifier in targets:
                try:
                    notifier.notify(alert)
                except NotifyError as error:
                    stats.record_delivery(notifier.name, "failed")
                    log.error("delivery failed", receiver=notifier.name, error=str(error))
                else:
                    stats.record_delivery(notifier.name, "ok")
                    if self._ledger is not None:
                        self._ledger.record(notifier.name, [alert.identity()])
        liveview.current().add_alerts(fresh)

    def _pending(self, alert: Alert) -> list[Notifier]:
        """The receivers that have not had this notification yet."""
        if self._ledger is None:
            return self._notifiers
        identity = alert.identity()
        return [n for n in self._notifiers if not self._ledger.delivered(n.name, identity)]

    def close(self) -> None:
        for notifier in self._notifiers:
            notifier.close()
        if self._ledger is not None:
            self._ledger.close()


class AlertSink(DynamicSink[Alert]):
    """Delivers alerts directly to the receivers built by ``build`` (one set per worker).

    With a ``ledger`` path, a notification already delivered to a receiver (same
    fingerprint, status and episode) is skipped: replays after a restart page nobody twice.
    """

    def __init__(self, build: Callable[[], list[Notifier]], ledger: str | None = None) -> None:
        self._build = build
        self._ledger = ledger

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _AlertPartition:
        ledger = DeliveryLedger(self._ledger) if self._ledger else None
        return _AlertPartition(self._build(), ledger)


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
