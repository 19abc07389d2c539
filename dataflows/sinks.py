"""Sinks: alerts into the durable outbox (which delivers them), rejected events to a file."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import orjson
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from spendwatch.core import liveview, stats
from spendwatch.core.alerts import Alert
from spendwatch.core.logging import get_logger
from spendwatch.ingest.events import DeadLetter
from spendwatch.notifiers.outbox import Outbox

log = get_logger("spendwatch.sink")


class _AlertPartition(StatelessSinkPartition[Alert]):
    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    def write_batch(self, items: Sequence[Alert]) -> None:
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        counters = stats.current()
        for alert in items:
            if alert.detected_at is None:
                alert.detected_at = now
            counters.alerts_by_rule[alert.rule] += 1
            counters.alerts_by_kind_rule[(alert.kind, alert.rule)] += 1
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
        # Stored durably before the batch counts as written; the outbox's threads deliver.
        self._outbox.put_many(items)
        liveview.current().add_alerts([a.model_dump(mode="json", exclude_none=True) for a in items])

    def close(self) -> None:
        # End of input: give pending deliveries the configured time to go out.
        self._outbox.flush()


class AlertSink(DynamicSink[Alert]):
    """Stores alerts in the durable outbox shared by every worker of this process."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _AlertPartition:
        return _AlertPartition(self._outbox)


class _DeadLetterPartition(StatelessSinkPartition[DeadLetter]):
    def __init__(self, path: str | None) -> None:
        self._fd = None
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            # raw rejected lines may carry whatever a client sent: owner-only
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

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
