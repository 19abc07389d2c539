"""Sinks: alerts into the durable outbox (which delivers them), rejected events to a file."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import orjson
from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)

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
        for alert in items:
            if alert.detected_at is None:
                alert.detected_at = now
        # Stored durably before the batch counts as written; the outbox's threads deliver.
        # A restart (or a reload) re-reads the input after the last snapshot and raises
        # its alerts again: only those the outbox did not hold yet are counted, logged
        # and shown as recent, so a replay neither pages nor counts anything twice.
        new = self._outbox.store(items)
        counters = stats.current()
        counters.alerts_replayed += len(items) - len(new)
        for alert in new:
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
        if new:
            liveview.current().add_alerts(
                [a.model_dump(mode="json", exclude_none=True) for a in new]
            )

    def close(self) -> None:
        # End of input: give pending deliveries the configured time to go out.
        self._outbox.flush()


class AlertSink(DynamicSink[Alert]):
    """Stores alerts in the durable outbox shared by every worker of this process."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _AlertPartition:
        return _AlertPartition(self._outbox)


class _DeadLetterFile(StatefulSinkPartition[DeadLetter, int | None]):
    """The dead-letter file, written once per input line across restarts.

    Its snapshot is the file's length. Bytewax writes a sink's items as they arrive, so
    the length snapshotted at the end of an epoch may already include rows of the next
    epoch, which a restart replays: on recovery the file is cut back to the snapshot's
    length (rows of epochs never committed), and the rows still in it are skipped by
    their key (source, offset, raw line) when the replay brings them again.
    """

    def __init__(self, path: str | None, resume: int | None, recoverable: bool) -> None:
        self._fd: int | None = None
        self._written: set[tuple[str, int, str]] = set()
        if not path:
            return
        self._fd = _open_dead_letters(path)
        size = os.fstat(self._fd).st_size
        if resume is not None and size > resume:
            log.info(
                "dead letters after the snapshot are written again",
                path=path,
                cut_bytes=size - resume,
            )
            os.ftruncate(self._fd, resume)
            size = resume
        if recoverable and size:
            self._written = _keys_in(path)

    def write_batch(self, items: Sequence[DeadLetter]) -> None:
        if self._fd is None or not items:
            return
        records = [item.to_record() for item in items]
        if self._written:
            records = [r for r in records if _key(r) not in self._written]
        if records:
            os.write(self._fd, b"".join(orjson.dumps(r) + b"\n" for r in records))

    def snapshot(self) -> int | None:
        return None if self._fd is None else os.fstat(self._fd).st_size

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)


def _open_dead_letters(path: str) -> int:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # raw rejected lines may carry whatever a client sent: owner-only
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def _key(record: dict[str, Any]) -> tuple[str, int, str] | None:
    offset = record.get("offset")
    if offset is None:
        return None
    return (record.get("source", ""), offset, record.get("raw") or record.get("raw_base64", ""))


def _keys_in(path: str) -> set[tuple[str, int, str]]:
    keys: set[tuple[str, int, str]] = set()
    with open(path, "rb") as existing:
        for line in existing:
            try:
                key = _key(orjson.loads(line))
            except (orjson.JSONDecodeError, AttributeError):
                continue  # a torn last line of a killed run
            if key is not None:
                keys.add(key)
    return keys


DEAD_LETTER_PART = "dead_letters"


class DeadLetterSink(FixedPartitionedSink[DeadLetter, int | None]):
    """Appends rejected events with their reason to a JSONL file (``None``: count only).

    One partition, so one worker of the whole cluster owns the file; items are
    ``(DEAD_LETTER_PART, letter)``. ``recoverable``: the run resumes from recovery state,
    and a restart must not write a line's dead letter twice.
    """

    def __init__(self, path: str | None, recoverable: bool = False) -> None:
        self.path = path
        self.recoverable = recoverable
        if path:  # exists from the start, even if nothing is rejected
            os.close(_open_dead_letters(path))

    def list_parts(self) -> list[str]:
        return [DEAD_LETTER_PART]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _DeadLetterFile:
        return _DeadLetterFile(self.path, resume_state, self.recoverable)
